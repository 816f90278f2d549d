# disk-formats/vmdk.mk: the vmdk driver's extra sources and tests (owned by its driver).
