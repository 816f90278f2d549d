# tests/tools/: test programs (fault proxy, rogue client) and the tests that use them.
#
# faultproxy: a loopback TCP relay that cuts connections after chosen byte counts.
# p2v-rogue: a misbehaving agent; each --case is one way to break the protocol.
check_PROGRAMS += tests/tools/faultproxy tests/tools/p2v-rogue
tests_tools_faultproxy_SOURCES = tests/tools/faultproxy.c
tests_tools_faultproxy_LDADD = libp2vcommon.la
tests_tools_p2v_rogue_SOURCES = tests/tools/p2v-rogue.c
tests_tools_p2v_rogue_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS) $(ZSTD_CFLAGS)
tests_tools_p2v_rogue_LDADD = libp2vcommon.la $(OPENSSL_LIBS) $(ZSTD_LIBS)

TOOLS_TESTS = \
	tests/integration/faultproxy.sh \
	tests/integration/capture-refusals.sh
TESTS += $(TOOLS_TESTS)
EXTRA_DIST += $(TOOLS_TESTS)
