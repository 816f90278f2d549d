# disk-formats/vmdk.mk: the vmdk driver's extra sources and tests (owned by its driver).
libdiskfmt_la_SOURCES += \
	disk-formats/vmdk.h \
	disk-formats/vmdk-parse.c \
	disk-formats/vmdk-stream.c

check_PROGRAMS += tests/unit/disk-formats/test-vmdk
tests_unit_disk_formats_test_vmdk_SOURCES = tests/unit/disk-formats/test-vmdk.c \
	tests/unit/disk-formats/dftest.h
tests_unit_disk_formats_test_vmdk_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_disk_formats_test_vmdk_LDADD = libdiskfmt.la libp2vcommon.la \
	$(ZLIB_LIBS) $(ZSTD_LIBS) $(VHDI_LIBS)
TESTS += tests/unit/disk-formats/test-vmdk

EXTRA_DIST += tests/fuzz/fuzz-vmdk.c tests/fuzz/seeds-vmdk.sh tests/fuzz/fuzz-diskfmt.h
