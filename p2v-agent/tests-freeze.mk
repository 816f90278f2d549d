# p2v-agent/freeze.c tests (owned by the freeze work): finding the mounts of a disk and
# the freeze watchdog, on an ext4 image on a loop device (root; skips otherwise)
check_PROGRAMS += tests/unit/agent/test-freeze
tests_unit_agent_test_freeze_SOURCES = tests/unit/agent/test-freeze.c p2v-agent/freeze.c \
	p2v-agent/freeze.h
tests_unit_agent_test_freeze_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_agent_test_freeze_LDADD = libp2vcommon.la
TESTS += tests/unit/agent/test-freeze
