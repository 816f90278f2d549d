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
