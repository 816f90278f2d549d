# server/: p2v-server, the conversion server (a private library so that the unit tests
# link the same code as the program).
noinst_LTLIBRARIES += libp2vserver.la
libp2vserver_la_SOURCES = \
	server/server.h \
	server/journal.c \
	server/jsonr.c \
	server/store.c \
	server/session.c \
	server/finish.c \
	server/pipeline.c \
	server/batch.c \
	server/run.c \
	server/status.c \
	server/http.c \
	server/vmconfig.h \
	server/vmconfig.c \
	server/ova.c
libp2vserver_la_CPPFLAGS = $(AM_CPPFLAGS) $(OPENSSL_CFLAGS) $(ZSTD_CFLAGS) $(ZLIB_CFLAGS) \
	-I$(top_srcdir)/driver-inject -I$(top_srcdir)/vmm
# the pipeline calls driver-inject and the VMM through their public headers
SERVER_LIBS = libp2vserver.la libdriverinject.la libvmm.la libdiskfmt.la libp2vcommon.la \
	$(GUESTFS_LIBS) $(EXT2FS_LIBS) -lcom_err $(OPENSSL_LIBS) $(ZSTD_LIBS) \
	$(ZLIB_LIBS) $(VHDI_LIBS) -lm

bin_PROGRAMS += p2v-server
p2v_server_SOURCES = server/p2v-server.c
p2v_server_CPPFLAGS = $(AM_CPPFLAGS) $(OPENSSL_CFLAGS)
p2v_server_LDADD = $(SERVER_LIBS)
dist_man_MANS += docs/man/p2v-server.1

# Unit tests (tests/unit/server/).
SERVER_UNIT_TESTS = \
	tests/unit/server/test-journal \
	tests/unit/server/test-store \
	tests/unit/server/test-vmconfig
check_PROGRAMS += $(SERVER_UNIT_TESTS)
tests_unit_server_test_journal_SOURCES = tests/unit/server/test-journal.c
tests_unit_server_test_journal_CPPFLAGS = $(UNIT_CPPFLAGS) -I$(top_srcdir)/server
tests_unit_server_test_journal_LDADD = $(SERVER_LIBS)
tests_unit_server_test_store_SOURCES = tests/unit/server/test-store.c
tests_unit_server_test_store_CPPFLAGS = $(UNIT_CPPFLAGS) -I$(top_srcdir)/server
tests_unit_server_test_store_LDADD = $(SERVER_LIBS)
tests_unit_server_test_vmconfig_SOURCES = tests/unit/server/test-vmconfig.c
tests_unit_server_test_vmconfig_CPPFLAGS = $(UNIT_CPPFLAGS) -I$(top_srcdir)/server
tests_unit_server_test_vmconfig_LDADD = $(SERVER_LIBS)
TESTS += $(SERVER_UNIT_TESTS)

# Integration tests of the program (run in the sanitizer build too).
SERVER_TESTS = \
	tests/integration/server-basic.sh \
	tests/integration/server-http.sh \
	tests/integration/vmconfig.sh \
	tests/integration/vmconfig-job.sh \
	tests/integration/server-outputs.sh \
	tests/integration/server-batch.sh
TESTS += $(SERVER_TESTS)
EXTRA_DIST += $(SERVER_TESTS)

# Boots the converted mini fixtures with the generated QEMU script (p2v-inject first):
# heavy, not repeated in the sanitizer build.
SERVER_HEAVY_TESTS = tests/integration/vmconfig-boot.sh tests/e2e/pipeline.sh
HEAVY_TESTS += $(SERVER_HEAVY_TESTS)
TESTS += $(SERVER_HEAVY_TESTS)
EXTRA_DIST += $(SERVER_HEAVY_TESTS)
