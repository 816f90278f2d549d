# imager unit tests: the read pipeline.
# --as-needed: these programs use only the pipeline, so libparted is not loaded; its
# initialiser trips ASan's strchr interceptor (a libparted bug, outside our code).
PIPELINE_AS_NEEDED = -Wl,--as-needed
check_PROGRAMS += tests/unit/imager/test-pipeline tests/unit/imager/pipeline-run
tests_unit_imager_test_pipeline_SOURCES = tests/unit/imager/test-pipeline.c
tests_unit_imager_test_pipeline_CPPFLAGS = $(UNIT_CPPFLAGS) $(ZSTD_CFLAGS) $(OPENSSL_CFLAGS)
tests_unit_imager_test_pipeline_LDADD = $(IMAGER_LIBS)
tests_unit_imager_test_pipeline_LDFLAGS = $(AM_LDFLAGS) $(PIPELINE_AS_NEEDED)
# a driver over a whole file: used by test-bad-sectors.sh (and by hand for throughput)
tests_unit_imager_pipeline_run_SOURCES = tests/unit/imager/pipeline-run.c
tests_unit_imager_pipeline_run_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_imager_pipeline_run_LDADD = $(IMAGER_LIBS)
tests_unit_imager_pipeline_run_LDFLAGS = $(AM_LDFLAGS) $(PIPELINE_AS_NEEDED)
TESTS += tests/unit/imager/test-pipeline tests/unit/imager/test-bad-sectors.sh
EXTRA_DIST += tests/unit/imager/test-bad-sectors.sh
# the pipeline's changeable compression level (imager_pipeline_set_level)
check_PROGRAMS += tests/unit/imager/test-pipeline-level
tests_unit_imager_test_pipeline_level_SOURCES = tests/unit/imager/test-pipeline-level.c
tests_unit_imager_test_pipeline_level_CPPFLAGS = $(UNIT_CPPFLAGS) $(ZSTD_CFLAGS)
tests_unit_imager_test_pipeline_level_LDADD = $(IMAGER_LIBS)
tests_unit_imager_test_pipeline_level_LDFLAGS = $(AM_LDFLAGS) $(PIPELINE_AS_NEEDED)
# p2v-agent's adaptive level controller (p2v-agent/adapt.c), a pure function of its
# measurements: it sits here beside the pipeline it drives
check_PROGRAMS += tests/unit/imager/test-adapt
tests_unit_imager_test_adapt_SOURCES = tests/unit/imager/test-adapt.c p2v-agent/adapt.c \
	p2v-agent/adapt.h
tests_unit_imager_test_adapt_CPPFLAGS = $(UNIT_CPPFLAGS)
tests_unit_imager_test_adapt_LDADD = libp2vcommon.la -lm
TESTS += tests/unit/imager/test-pipeline-level tests/unit/imager/test-adapt
