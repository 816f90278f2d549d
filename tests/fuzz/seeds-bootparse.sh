#!/bin/sh
# seeds-bootparse.sh DIR: a seed corpus for fuzz-bootparse: grub.cfg texts (first byte
# 'g', even) and extlinux.conf texts (first byte 'e', odd), shaped like grub-mkconfig's
# output, hand-written files and syslinux's.
set -eu
out=$1
mkdir -p "$out"
seed() { { printf '%s' "$1"; cat; } >"$out/$2"; }
seed g grub-hand <<'X'
set default=0
search --no-floppy --fs-uuid --set=root d12b1050-5eed
menuentry 'Debian GNU/Linux (6.1.0-50-amd64)' {
    linux /boot/vmlinuz root=UUID=d12b1050-5eed ro console=ttyS0,115200
    initrd /boot/initrd.img
}
X
seed g grub-mkconfig <<'X'
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
else
   set default="1>1"
fi
if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi
function load_video {
  insmod all_video
}
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-x' {
	load_video
	set root='hd0,msdos1'
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1  x
	else
	  search --no-floppy --fs-uuid --set=root x
	fi
	linux	/boot/vmlinuz-6.1.0-50-amd64 root=UUID=x ro  quiet
	initrd	/boot/initrd.img-6.1.0-50-amd64
}
submenu 'Advanced options' $menuentry_id_option 'gnulinux-advanced-x' {
	menuentry 'with Linux 6.1.0-50-amd64' $menuentry_id_option 'a' {
		linux16	($root)/boot/vmlinuz-6.1.0-50-amd64 root=UUID=x ro \
		  "quoted arg" 'single' esc\ aped
		initrd	/boot/initrd.img-6.1.0-50-amd64 /boot/second
	}
	menuentry 'recovery' { linuxefi (hd0,gpt2)/vmlinuz single; initrdefi /i; }
}
X
seed e extlinux-mini <<'X'
# p2vkit mini (BIOS): extlinux
SERIAL 0 115200
DEFAULT mini
PROMPT 0
TIMEOUT 10
LABEL mini
    MENU LABEL p2vkit mini
    LINUX /boot/vmlinuz-6.1.0-56-amd64
    INITRD /boot/initrd.img-6.1.0-56-amd64
    APPEND root=/dev/sda1 console=ttyS0,115200 rw
X
seed e syslinux-cmd <<'X'
ui menu.c32
append console=ttyS0
default vmlinuz initrd=initrd.gz,b.gz root=/dev/sda2
label rescue
  kernel vmlinuz-rescue
  append -
X
