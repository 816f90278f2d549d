# driver-inject/: libdriverinject and p2v-inject (OS inspection with libguestfs and the
# guest changes that make a captured system boot on virtio hardware).
noinst_LTLIBRARIES += libdriverinject.la
libdriverinject_la_SOURCES = \
	driver-inject/driverinject.h \
	driver-inject/di-int.h \
	driver-inject/di-report.h \
	driver-inject/rewrite.c \
	driver-inject/cpio.c \
	driver-inject/modules.c \
	driver-inject/report.c \
	driver-inject/inject.c
libdriverinject_la_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/driver-inject
libdriverinject_la_CFLAGS = $(AM_CFLAGS) $(GUESTFS_CFLAGS) $(ZLIB_CFLAGS) $(ZSTD_CFLAGS)
DRIVERINJECT_LIBS = libdriverinject.la libdiskfmt.la libp2vcommon.la $(GUESTFS_LIBS) \
	$(ZLIB_LIBS) $(ZSTD_LIBS) $(VHDI_LIBS)

bin_PROGRAMS += p2v-inject
p2v_inject_SOURCES = driver-inject/p2v-inject.c
p2v_inject_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/driver-inject
p2v_inject_LDADD = $(DRIVERINJECT_LIBS)
dist_man_MANS += docs/man/p2v-inject.1

# Unit tests of the pure parts (tests/unit/driver-inject/).
DI_UNIT_TESTS = \
	tests/unit/driver-inject/test-rewrite \
	tests/unit/driver-inject/test-cpio \
	tests/unit/driver-inject/test-modules
check_PROGRAMS += $(DI_UNIT_TESTS)
tests_unit_driver_inject_test_rewrite_SOURCES = tests/unit/driver-inject/test-rewrite.c
tests_unit_driver_inject_test_rewrite_CPPFLAGS = $(UNIT_CPPFLAGS) -I$(top_srcdir)/driver-inject
tests_unit_driver_inject_test_rewrite_LDADD = $(DRIVERINJECT_LIBS)
tests_unit_driver_inject_test_cpio_SOURCES = tests/unit/driver-inject/test-cpio.c
tests_unit_driver_inject_test_cpio_CPPFLAGS = $(UNIT_CPPFLAGS) -I$(top_srcdir)/driver-inject
tests_unit_driver_inject_test_cpio_LDADD = $(DRIVERINJECT_LIBS)
tests_unit_driver_inject_test_modules_SOURCES = tests/unit/driver-inject/test-modules.c
tests_unit_driver_inject_test_modules_CPPFLAGS = $(UNIT_CPPFLAGS) -I$(top_srcdir)/driver-inject
tests_unit_driver_inject_test_modules_LDADD = $(DRIVERINJECT_LIBS)
TESTS += $(DI_UNIT_TESTS)

# Integration tests. inject-errors runs in the sanitizer build too (libguestfs on the
# mini-bios fixture, dry run, refusals); the ones that boot guests are HEAVY_TESTS.
DI_TESTS = \
	tests/integration/inject-errors.sh \
	tests/integration/inject-mini-bios.sh \
	tests/integration/inject-debian12.sh
TESTS += $(DI_TESTS)
HEAVY_TESTS += tests/integration/inject-mini-bios.sh tests/integration/inject-debian12.sh
EXTRA_DIST += $(DI_TESTS)
