# tests/: unit tests (C, TAP), integration and end-to-end scripts (bash, TAP).
UNIT_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tests

check_PROGRAMS += tests/unit/common/test-common
tests_unit_common_test_common_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_common_test_common_LDADD = libp2vcommon.la
TESTS += tests/unit/common/test-common

EXTRA_DIST += tests/tap.h tests/capture-lib.sh tests/compare-used.py

# Integration tests of our own programs (run in the sanitizer build too).
CODE_TESTS = \
	tests/integration/p2v-img-roundtrip.sh \
	tests/integration/p2v-img-errors.sh \
	tests/integration/p2v-img-kill.sh \
	tests/integration/capture-fixtures.sh \
	tests/integration/capture-faults.sh \
	tests/integration/capture-many.sh \
	tests/integration/capture-nospace.sh
# Fixture proofs: QEMU boots the "physical machines" (no code of ours runs).
FIXTURE_TESTS = \
	tests/integration/fixture-mini-bios.sh \
	tests/integration/fixture-mini-uefi.sh \
	tests/integration/fixture-debian12-bios.sh
TESTS += $(CODE_TESTS) $(FIXTURE_TESTS)
EXTRA_DIST += $(CODE_TESTS) $(FIXTURE_TESTS) tests/bench tests/fuzz

# The slowest tests, slowest first (measured in a CI run): scripts/test-all starts them
# first so that `make -j` does not end on one long test alone.
SLOW_TESTS = \
	tests/e2e/pipeline.sh \
	tests/integration/vmm-kvm.sh \
	tests/integration/capture-faults.sh \
	tests/integration/capture-live-lvm.sh \
	tests/integration/inject-debian12.sh \
	tests/integration/inject-errors.sh \
	tests/integration/fixture-debian12-bios.sh \
	tests/integration/inject-mini-bios.sh \
	tests/integration/capture-fixtures.sh \
	tests/integration/media-errors.sh \
	tests/integration/vmm-qemu.sh \
	tests/integration/media-build.sh \
	tests/integration/vmconfig-boot.sh
ORDERED_TESTS = $(foreach t,$(SLOW_TESTS),$(filter $(t),$(TESTS))) $(filter-out $(SLOW_TESTS),$(TESTS))
# The sanitizer build runs every test but the fixture proofs and the HEAVY_TESTS.
SANITIZER_TESTS = $(filter-out $(FIXTURE_TESTS) $(HEAVY_TESTS),$(ORDERED_TESTS))
print-check-tests:
	@echo $(ORDERED_TESTS)
print-sanitizer-tests:
	@echo $(SANITIZER_TESTS)
.PHONY: print-check-tests print-sanitizer-tests
