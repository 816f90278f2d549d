# disk-formats/vhd.mk: the vhd driver's extra sources and tests (owned by its driver).
