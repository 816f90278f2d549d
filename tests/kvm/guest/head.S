/* tests/kvm/guest/head.S: entries of the test guest.
 *
 * 0x100000 (Multiboot, for testing under QEMU -kernel only): the Multiboot v1 header and a
 *   32-bit stub that identity-maps the first 4 GiB with 2 MiB pages, builds a zero page with
 *   the Multiboot command line at cmd_line_ptr (0x228), enters long mode and jumps to the
 *   64-bit entry as a Linux boot-protocol loader would.
 * 0x100200 (the Linux boot protocol's 64-bit entry: the one our VMM uses): long mode, paging,
 *   CS 0x10, DS/ES/SS 0x18, RSI = boot_params, interrupts off. Zero bss, take our own stack,
 *   main(boot_params); should main return, cli; hlt forever. */

#define MB_MAGIC 0x1badb002
#define MB_FLAGS 0x00000000

    .section .text.head, "ax"
    .code32
    .globl mb_entry
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

mb_entry:
    cli
    cld
    movl %ebx, %esi                 /* Multiboot info */
    movl $_mb_start, %edi           /* zero page tables, zero page, command line */
    movl $_mb_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $mb_pdpt + 3, mb_pml4
    movl $mb_pd + 3, %eax           /* four page directories: 4 GiB */
    movl %eax, mb_pdpt
    addl $0x1000, %eax
    movl %eax, mb_pdpt + 8
    addl $0x1000, %eax
    movl %eax, mb_pdpt + 16
    addl $0x1000, %eax
    movl %eax, mb_pdpt + 24
    movl $mb_pd, %edi
    movl $0x83, %eax                /* present, writable, 2 MiB */
    movl $2048, %ecx
1:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 1b
    testl $4, (%esi)                /* flags bit 2: cmdline at +16 */
    jz 3f
    movl 16(%esi), %ebx
    movl $mb_cmdline, %edi
    movl $2047, %ecx
2:  movb (%ebx), %al
    testb %al, %al
    jz 3f
    movb %al, (%edi)
    incl %ebx
    incl %edi
    loop 2b
3:  movl $mb_cmdline, mb_zeropage + 0x228
    movl %cr4, %eax
    orl $0x20, %eax                 /* PAE */
    movl %eax, %cr4
    movl $mb_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx          /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           /* PG, PE */
    movl %eax, %cr0
    lgdt mb_gdt_ptr
    ljmp $0x10, $mb_long

    .code64
mb_long:
    movl $0x18, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $mb_zeropage, %esi
    jmp entry64

    .balign 8
mb_gdt:
    .quad 0
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x10: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x18: data */
mb_gdt_ptr:
    .word mb_gdt_ptr - mb_gdt - 1
    .long mb_gdt

    .org 0x200                      /* the assembler fails here if the stub grew too big */
    .globl entry64
entry64:
    cli
    cld
    movl $_bss_start, %edi
    movl $_bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb                       /* RSI (boot_params) is left alone */
    movq $stack_top, %rsp
    xorl %ebp, %ebp
    movq %rsi, %rdi
    call main
4:  cli
    hlt
    jmp 4b

    .section .bss
    .balign 16
stack:
    .skip 16384
stack_top:

    .section .mbdata, "aw", @nobits
    .balign 4096
mb_pml4:    .skip 4096
mb_pdpt:    .skip 4096
mb_pd:      .skip 4 * 4096
mb_zeropage: .skip 4096
mb_cmdline: .skip 2048

    .section .note.GNU-stack, "", @progbits
