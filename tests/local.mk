# tests/: unit tests (C, TAP), integration and end-to-end scripts (bash, TAP).
UNIT_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tests

check_PROGRAMS += tests/unit/common/test-common
tests_unit_common_test_common_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_common_test_common_LDADD = libp2vcommon.la
TESTS += tests/unit/common/test-common

EXTRA_DIST += tests/tap.h
