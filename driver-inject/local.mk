# driver-inject/: libdriverinject and p2v-inject (OS inspection with libguestfs and the
# guest changes that make a captured system boot on virtio hardware).
