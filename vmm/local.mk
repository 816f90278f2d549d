# vmm/: libvmm and p2v-vmm — the verification VMM (KVM core, the Linux boot protocol,
# PCI, virtio-blk, 16550 UART, CMOS, reset/poweroff) with a QEMU TCG engine beside it.
noinst_LTLIBRARIES += libvmm.la
libvmm_la_SOURCES = \
	vmm/vmm.h \
	vmm/vmm-int.h \
	vmm/core.h \
	vmm/bootcfg-int.h \
	vmm/vmm.c \
	vmm/kvm.c \
	vmm/calibrate.c \
	vmm/verdict.c \
	vmm/loader.c \
	vmm/mptable.c \
	vmm/bootparse.c \
	vmm/bootcfg.c \
	vmm/ext2io.c \
	vmm/fatio.c \
	vmm/bus.c \
	vmm/pci.c \
	vmm/uart.c \
	vmm/rtc.c \
	vmm/misc.c \
	vmm/disk.c \
	vmm/virtio-blk.c
libvmm_la_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/vmm
libvmm_la_CFLAGS = $(AM_CFLAGS) $(EXT2FS_CFLAGS) $(ZLIB_CFLAGS)
VMM_LIBS = libvmm.la libdiskfmt.la libp2vcommon.la $(EXT2FS_LIBS) -lcom_err $(VHDI_LIBS) \
	$(ZSTD_LIBS) $(ZLIB_LIBS) $(OPENSSL_LIBS)

bin_PROGRAMS += p2v-vmm
p2v_vmm_SOURCES = vmm/p2v-vmm.c
p2v_vmm_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/vmm
p2v_vmm_LDADD = $(VMM_LIBS)
dist_man_MANS += docs/man/p2v-vmm.1

# Unit tests: the device models, the loader, the parsers, the verdict (no KVM needed).
VMM_UNIT_TESTS = \
	tests/unit/vmm/test-verdict \
	tests/unit/vmm/test-loader \
	tests/unit/vmm/test-bootparse \
	tests/unit/vmm/test-bootcfg \
	tests/unit/vmm/test-devices \
	tests/unit/vmm/test-disk \
	tests/unit/vmm/test-virtio-blk
check_PROGRAMS += $(VMM_UNIT_TESTS)
VMM_UNIT_CPPFLAGS = $(UNIT_CPPFLAGS) -I$(top_srcdir)/vmm
tests_unit_vmm_test_verdict_SOURCES = tests/unit/vmm/test-verdict.c
tests_unit_vmm_test_verdict_CPPFLAGS = $(VMM_UNIT_CPPFLAGS)
tests_unit_vmm_test_verdict_LDADD = $(VMM_LIBS)
tests_unit_vmm_test_loader_SOURCES = tests/unit/vmm/test-loader.c
tests_unit_vmm_test_loader_CPPFLAGS = $(VMM_UNIT_CPPFLAGS)
tests_unit_vmm_test_loader_LDADD = $(VMM_LIBS)
tests_unit_vmm_test_bootparse_SOURCES = tests/unit/vmm/test-bootparse.c
tests_unit_vmm_test_bootparse_CPPFLAGS = $(VMM_UNIT_CPPFLAGS)
tests_unit_vmm_test_bootparse_LDADD = $(VMM_LIBS)
tests_unit_vmm_test_bootcfg_SOURCES = tests/unit/vmm/test-bootcfg.c
tests_unit_vmm_test_bootcfg_CPPFLAGS = $(VMM_UNIT_CPPFLAGS)
tests_unit_vmm_test_bootcfg_LDADD = $(VMM_LIBS)
tests_unit_vmm_test_devices_SOURCES = tests/unit/vmm/test-devices.c
tests_unit_vmm_test_devices_CPPFLAGS = $(VMM_UNIT_CPPFLAGS)
tests_unit_vmm_test_devices_LDADD = $(VMM_LIBS)
tests_unit_vmm_test_disk_SOURCES = tests/unit/vmm/test-disk.c
tests_unit_vmm_test_disk_CPPFLAGS = $(VMM_UNIT_CPPFLAGS)
tests_unit_vmm_test_disk_LDADD = $(VMM_LIBS)
tests_unit_vmm_test_virtio_blk_SOURCES = tests/unit/vmm/test-virtio-blk.c
tests_unit_vmm_test_virtio_blk_CPPFLAGS = $(VMM_UNIT_CPPFLAGS)
tests_unit_vmm_test_virtio_blk_LDADD = $(VMM_LIBS)
TESTS += $(VMM_UNIT_TESTS)

# Integration tests: bad input (all builds); verdicts through QEMU TCG on this machine and
# through our VMM on real KVM (nested here: tests/kvm/) are HEAVY_TESTS.
VMM_TESTS = \
	tests/integration/vmm-errors.sh \
	tests/integration/vmm-qemu.sh \
	tests/integration/vmm-kvm.sh
TESTS += $(VMM_TESTS)
HEAVY_TESTS += tests/integration/vmm-qemu.sh tests/integration/vmm-kvm.sh
EXTRA_DIST += $(VMM_TESTS) tests/kvm tests/integration/kvm-nest-selftest.sh
