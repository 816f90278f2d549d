# disk-formats/qcow2.mk: the qcow2 driver's extra sources and tests (owned by its driver).
