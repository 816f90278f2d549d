# Live capture (p2v-agent --live): a mounted ext4 under a write load, the freeze and its
# watchdog, --continuous and p2v-server cutover (run in the sanitizer build too).
LIVE_TESTS = tests/integration/capture-live.sh
TESTS += $(LIVE_TESTS)
EXTRA_DIST += $(LIVE_TESTS) tests/integration/live-writer.py tests/integration/live-check.sh
# the same on LVM, with the cutover's snapshot: inside tests/kvm/nest (normal build only)
LIVE_HEAVY_TESTS = tests/integration/capture-live-lvm.sh
HEAVY_TESTS += $(LIVE_HEAVY_TESTS)
TESTS += $(LIVE_HEAVY_TESTS)
EXTRA_DIST += $(LIVE_HEAVY_TESTS) tests/integration/live-lvm-inner.sh
# LVM snapshots at the cutover (snap.c): the parsers here; lvcreate and the final pass on
# real LVM in capture-live-lvm.sh (inside tests/kvm/nest: this machine has no device-mapper)
check_PROGRAMS += tests/unit/agent/test-snap
tests_unit_agent_test_snap_SOURCES = tests/unit/agent/test-snap.c p2v-agent/snap.c \
	p2v-agent/snap.h p2v-agent/freeze.c p2v-agent/freeze.h
tests_unit_agent_test_snap_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_agent_test_snap_LDADD = libp2vcommon.la
TESTS += tests/unit/agent/test-snap
