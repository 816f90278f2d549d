# disk-formats/qcow2.mk: the qcow2 driver's extra sources and tests (owned by its driver).
libdiskfmt_la_SOURCES += \
	disk-formats/qcow2.h \
	disk-formats/qcow2-parse.c \
	disk-formats/qcow2-write.c \
	disk-formats/qcow2-check.c

check_PROGRAMS += tests/unit/disk-formats/test-qcow2
tests_unit_disk_formats_test_qcow2_SOURCES = tests/unit/disk-formats/test-qcow2.c \
	tests/unit/disk-formats/dftest.h
tests_unit_disk_formats_test_qcow2_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_disk_formats_test_qcow2_LDADD = libdiskfmt.la libp2vcommon.la \
	$(ZLIB_LIBS) $(ZSTD_LIBS) $(VHDI_LIBS)
TESTS += tests/unit/disk-formats/test-qcow2

EXTRA_DIST += tests/fuzz/fuzz-qcow2.c tests/fuzz/seeds-qcow2.sh tests/fuzz/fuzz-diskfmt.h
