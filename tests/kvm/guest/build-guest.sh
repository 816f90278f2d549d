#!/bin/sh
# tests/kvm/guest/build-guest.sh: build the freestanding test guest of p2v-vmm.
#
#   build-guest.sh OUTFILE [CC] [--multiboot OUT2]
#
# OUTFILE is a fake bzImage that p2v-vmm boots through the Linux boot protocol as if it were
# a kernel: a boot sector and one setup sector (setup_sects = 1) holding a setup header
# (boot protocol 2.15, LOADED_HIGH, XLF_KERNEL_64, not relocatable, code32_start 0x100000,
# kernel_version "p2vkit-testguest 1"), then the payload: the guest linked at 0x100000 whose
# 64-bit entry is at 0x100200 (payload offset 0x200), as for a Linux kernel.
#
# The guest (guest.c, head.S, guest.ld) takes `sectors=N start=S` on its command line
# (defaults 2048 and 0), prints "p2vkit-testguest: hello" on COM1, lists PCI bus 0, reads N
# sectors from S off the first virtio-blk (1af4:1042, virtio 1.0 modern, polled), prints
# "p2vkit-testguest: sha256 <hex> sectors=<N>" (equal to
# `dd if=disk.raw bs=512 skip=S count=N | sha256sum`) and "p2vkit-testguest: capacity <C>",
# or "p2vkit-testguest: error <what>"; then powers off (outw 0x604 0x2000, then outb 0x501).
#
# --multiboot OUT2 also writes the same guest as a 32-bit ELF with a Multiboot v1 header whose
# 32-bit stub enters long mode with the same page tables and segments our VMM sets up and
# jumps to the same 64-bit entry: so it runs under QEMU for testing:
#   qemu-system-x86_64 -accel tcg -kernel OUT2 -append 'sectors=100' \
#     -drive file=disk.raw,format=raw,if=none,id=d0 \
#     -device virtio-blk-pci,drive=d0,disable-legacy=on -serial stdio -display none \
#     -device isa-debug-exit,iobase=0x501,iosize=1
# (QEMU then exits with 1 on success, 3 on an error.)
# Needs: gcc (or CC), binutils (ld, objcopy, nm), python3.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out='' cc='' mbout=''
while [ $# -gt 0 ]; do
    case $1 in
        --multiboot) [ $# -ge 2 ] || { echo "build-guest.sh: --multiboot needs a file" >&2; exit 2; }
                     mbout=$2; shift 2 ;;
        *) if [ -z "$out" ]; then out=$1; elif [ -z "$cc" ]; then cc=$1
           else echo "build-guest.sh: unexpected argument '$1'" >&2; exit 2; fi
           shift ;;
    esac
done
[ -n "$out" ] || { echo "usage: build-guest.sh OUTFILE [CC] [--multiboot OUT2]" >&2; exit 2; }
cc=${cc:-${CC:-gcc}}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/p2vkit-guest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

cflags="-std=gnu11 -O2 -Wall -Wextra -Werror -ffreestanding -nostdlib -fno-pic -fno-pie
 -mcmodel=small -mno-red-zone -mgeneral-regs-only -fno-stack-protector
 -fno-asynchronous-unwind-tables -fno-unwind-tables -fcf-protection=none -fno-builtin
 -fno-tree-loop-distribute-patterns"
# shellcheck disable=SC2086
"$cc" $cflags -c "$here/head.S" -o "$tmp/head.o"
# shellcheck disable=SC2086
"$cc" $cflags -c "$here/guest.c" -o "$tmp/guest.o"
# shellcheck disable=SC2086
"$cc" $cflags -no-pie -static -Wl,--build-id=none -Wl,-z,max-page-size=0x1000 -Wl,-z,noexecstack \
    -T "$here/guest.ld" -o "$tmp/guest.elf" "$tmp/head.o" "$tmp/guest.o" -lgcc
objcopy -O binary --only-section=.text --only-section=.rodata --only-section=.data \
    "$tmp/guest.elf" "$tmp/payload.bin"
entry=$(nm "$tmp/guest.elf" | awk '$3 == "entry64" { print $1 }')
end=$(nm "$tmp/guest.elf" | awk '$3 == "_end" { print $1 }')
[ "$entry" = 0000000000100200 ] || { echo "build-guest.sh: entry64 at 0x$entry, not 0x100200" >&2; exit 1; }

python3 - "$tmp/payload.bin" "$end" "$tmp/bzimage" <<'PY'
import struct, sys
payload = open(sys.argv[1], "rb").read()
end = int(sys.argv[2], 16)
init_size = (end - 0x100000 + 0xfff) & ~0xfff     # payload + bss + the Multiboot area
assert init_size >= len(payload)
setup = bytearray(2 * 512)                        # boot sector + setup_sects (1)
def put(off, fmt, *v): struct.pack_into("<" + fmt, setup, off, *v)
put(0x1f1, "B", 1)                                # setup_sects
put(0x1f4, "I", (len(payload) + 15) // 16)        # syssize
put(0x1fa, "H", 0xffff)                           # vid_mode: normal
put(0x1fe, "H", 0xaa55)                           # boot_flag
put(0x200, "BB", 0xeb, 0x68 - 0x02)               # jump past the header to a hlt loop
setup[0x202:0x206] = b"HdrS"
put(0x206, "H", 0x020f)                           # boot protocol 2.15
put(0x211, "B", 0x01)                             # loadflags: LOADED_HIGH
put(0x214, "I", 0x100000)                         # code32_start
put(0x230, "I", 0x200000)                         # kernel_alignment
put(0x234, "B", 0)                                # relocatable_kernel: no
put(0x236, "H", 0x0001)                           # xloadflags: XLF_KERNEL_64
put(0x238, "I", 0x7ff)                            # cmdline_size
put(0x258, "Q", 0x100000)                         # pref_address
put(0x260, "I", init_size)                        # init_size
setup[0x268:0x26c] = bytes([0xfa, 0xf4, 0xeb, 0xfd])  # cli; hlt; jmp hlt (16-bit: never used)
ver = b"p2vkit-testguest 1\0"
setup[0x300:0x300 + len(ver)] = ver
put(0x20e, "H", 0x300 - 0x200)                    # kernel_version
open(sys.argv[3], "wb").write(bytes(setup) + payload)
PY
mv -f "$tmp/bzimage" "$out"
if [ -n "$mbout" ]; then
    objcopy -O elf32-i386 "$tmp/guest.elf" "$tmp/guest32.elf"
    mv -f "$tmp/guest32.elf" "$mbout"
fi
