# imager unit tests: discovery and planning (owned by the discovery/planning half).
# plan-tool drives libimager for the shell test, which builds real disks (MBR, GPT, none)
# with real file systems (ext4, swap, NTFS) and checks the plan with e2fsck, debugfs and
# the ntfs-3g tools.
check_PROGRAMS += tests/unit/imager/plan-tool
tests_unit_imager_plan_tool_SOURCES = tests/unit/imager/plan-tool.c
tests_unit_imager_plan_tool_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_imager_plan_tool_LDADD = $(IMAGER_LIBS)
TESTS += tests/unit/imager/test-discover-plan.sh
EXTRA_DIST += tests/unit/imager/test-discover-plan.sh tests/fuzz/fuzz-ntfs.c \
	tests/fuzz/seeds-ntfs.sh
