# imager/: libimager (discovery, planning, the read pipeline).
noinst_LTLIBRARIES += libimager.la
libimager_la_SOURCES = \
	imager/imager.h \
	imager/imager-int.h \
	imager/discover.c \
	imager/plan.c \
	imager/ntfs.c \
	imager/pipeline.c
libimager_la_CPPFLAGS = $(AM_CPPFLAGS) $(PARTED_CFLAGS) $(BLKID_CFLAGS) $(EXT2FS_CFLAGS) \
	$(ZSTD_CFLAGS) $(OPENSSL_CFLAGS)
libimager_la_LIBADD = libp2vcommon.la $(PARTED_LIBS) $(BLKID_LIBS) $(EXT2FS_LIBS) \
	$(ZSTD_LIBS) $(OPENSSL_LIBS)
IMAGER_LIBS = libimager.la libdiskfmt.la libp2vcommon.la $(PARTED_LIBS) $(BLKID_LIBS) \
	$(EXT2FS_LIBS) $(ZSTD_LIBS) $(OPENSSL_LIBS) $(VHDI_LIBS) $(ZLIB_LIBS) -lm

include imager/tests-plan.mk
include imager/tests-pipeline.mk
