# Live capture (p2v-agent --live): a mounted ext4 under a write load, the freeze and its
# watchdog, --continuous and p2v-server cutover (run in the sanitizer build too).
LIVE_TESTS = tests/integration/capture-live.sh
TESTS += $(LIVE_TESTS)
EXTRA_DIST += $(LIVE_TESTS) tests/integration/live-writer.py tests/integration/live-check.sh
