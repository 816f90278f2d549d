# p2v-agent/mkmedia.mk: p2v-mkmedia, the builder of boot media (hybrid ISO/USB image for
# BIOS and UEFI, or a PXE folder) that start p2v-agent. A bash script substituted from
# p2v-mkmedia.in; the files that go into every medium (the initramfs's /init, the DHCP
# script) are installed under $(pkgdatadir)/media.
p2vmkmediadir = $(bindir)
p2vmkmedia_SCRIPTS = p2v-agent/p2v-mkmedia
mediadir = $(pkgdatadir)/media
dist_media_DATA = p2v-agent/media/init p2v-agent/media/udhcpc.script
dist_man_MANS += docs/man/p2v-mkmedia.1
EXTRA_DIST += p2v-agent/p2v-mkmedia.in
CLEANFILES += p2v-agent/p2v-mkmedia

p2v-agent/p2v-mkmedia: p2v-agent/p2v-mkmedia.in Makefile
	$(AM_V_GEN)$(MKDIR_P) p2v-agent && \
	sed -e 's|@bindir[@]|$(bindir)|g' -e 's|@pkgdatadir[@]|$(pkgdatadir)|g' \
	    -e 's|@PACKAGE_VERSION[@]|$(PACKAGE_VERSION)|g' \
	    $(srcdir)/p2v-agent/p2v-mkmedia.in >$@.tmp && chmod +x $@.tmp && mv $@.tmp $@

# media-build: building (ISO and PXE), contents, settings, errors; no guest is booted.
# The others boot the media under QEMU TCG (BIOS and UEFI) against a p2v-server.
MEDIA_TESTS = \
	tests/integration/media-build.sh
MEDIA_HEAVY_TESTS = \
	tests/integration/media-bios.sh \
	tests/integration/media-uefi.sh \
	tests/integration/media-ask.sh \
	tests/integration/media-errors.sh \
	tests/integration/media-pxe.sh
TESTS += $(MEDIA_TESTS) $(MEDIA_HEAVY_TESTS)
# media-build runs no code of ours that the sanitizers could watch (the agent in the
# image is only started with --help): not repeated in the sanitizer build either
HEAVY_TESTS += $(MEDIA_TESTS) $(MEDIA_HEAVY_TESTS)
EXTRA_DIST += $(MEDIA_TESTS) $(MEDIA_HEAVY_TESTS) tests/integration/media-lib.sh
