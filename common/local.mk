# common/: libp2vcommon.
noinst_LTLIBRARIES += libp2vcommon.la
libp2vcommon_la_SOURCES = \
	common/p2v-common.h \
	common/err.c \
	common/log.c \
	common/rd.c \
	common/buf.c \
	common/json.c \
	common/progress.c \
	common/util.c \
	common/p2v-proto.h \
	common/proto.c \
	common/p2v-tls.h \
	common/tls.c
libp2vcommon_la_CPPFLAGS = $(AM_CPPFLAGS) $(OPENSSL_CFLAGS) $(ZSTD_CFLAGS)
libp2vcommon_la_LIBADD = -lm $(OPENSSL_LIBS) $(ZSTD_LIBS)

# Unit tests of the codec and the TLS layer (tests/unit/common/).
check_PROGRAMS += tests/unit/common/test-proto
tests_unit_common_test_proto_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tests $(ZSTD_CFLAGS)
tests_unit_common_test_proto_LDADD = libp2vcommon.la
TESTS += tests/unit/common/test-proto
check_PROGRAMS += tests/unit/common/test-tls
tests_unit_common_test_tls_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tests $(OPENSSL_CFLAGS)
tests_unit_common_test_tls_LDADD = libp2vcommon.la $(OPENSSL_LIBS)
TESTS += tests/unit/common/test-tls
