# disk-formats/vhd.mk: the vhd and vhdx drivers' extra sources and tests (owned by its driver).
libdiskfmt_la_SOURCES += \
	disk-formats/vhd.h \
	disk-formats/vhd-parse.c \
	disk-formats/vhd-vhdi.c

check_PROGRAMS += tests/unit/disk-formats/test-vhd
tests_unit_disk_formats_test_vhd_SOURCES = tests/unit/disk-formats/test-vhd.c \
	tests/unit/disk-formats/dftest.h
tests_unit_disk_formats_test_vhd_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_disk_formats_test_vhd_LDADD = libdiskfmt.la libp2vcommon.la \
	$(ZLIB_LIBS) $(ZSTD_LIBS) $(VHDI_LIBS)
TESTS += tests/unit/disk-formats/test-vhd

EXTRA_DIST += tests/fuzz/fuzz-vhd.c tests/fuzz/fuzz-vhdx.c \
	tests/fuzz/seeds-vhd.sh tests/fuzz/seeds-vhdx.sh tests/fuzz/fuzz-diskfmt.h
