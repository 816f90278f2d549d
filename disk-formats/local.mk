# disk-formats/: libdiskfmt and p2v-img.
noinst_LTLIBRARIES += libdiskfmt.la
libdiskfmt_la_SOURCES = \
	disk-formats/diskfmt.h \
	disk-formats/diskfmt-int.h \
	disk-formats/diskfmt.c \
	disk-formats/raw.c \
	disk-formats/qcow2.c \
	disk-formats/vmdk.c \
	disk-formats/vhd.c \
	disk-formats/vhdx.c
libdiskfmt_la_CFLAGS = $(AM_CFLAGS) $(ZLIB_CFLAGS) $(ZSTD_CFLAGS) $(VHDI_CFLAGS)
libdiskfmt_la_LIBADD = libp2vcommon.la $(ZLIB_LIBS) $(ZSTD_LIBS) $(VHDI_LIBS)

# The resumable writers (diskfmt_checkpoint / diskfmt_resume: raw and qcow2).
check_PROGRAMS += tests/unit/disk-formats/test-resume
tests_unit_disk_formats_test_resume_SOURCES = tests/unit/disk-formats/test-resume.c \
	tests/unit/disk-formats/dftest.h
tests_unit_disk_formats_test_resume_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_disk_formats_test_resume_LDADD = libdiskfmt.la libp2vcommon.la \
	$(ZLIB_LIBS) $(ZSTD_LIBS) $(VHDI_LIBS)
TESTS += tests/unit/disk-formats/test-resume

include disk-formats/qcow2.mk
include disk-formats/vmdk.mk
include disk-formats/vhd.mk

bin_PROGRAMS += p2v-img
p2v_img_SOURCES = disk-formats/p2v-img.c
p2v_img_LDADD = libdiskfmt.la libp2vcommon.la $(ZLIB_LIBS) $(ZSTD_LIBS) $(VHDI_LIBS)
dist_man_MANS += docs/man/p2v-img.1
