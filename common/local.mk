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
	common/util.c
libp2vcommon_la_LIBADD = -lm
