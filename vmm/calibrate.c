/* calibrate.c: is /dev/kvm fast? A tiny real-mode guest runs a counted loop (its
 * instruction rate), then a burst of port writes (the cost of an exit to user space), then
 * powers off. Hardware KVM does the loop in milliseconds; a software layer takes seconds, so
 * the run is bounded and a guest that has not finished in time counts as slow.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "core.h"

#define CAL_LOOP 20000000u  /* loop iterations: 2 instructions each */
#define CAL_EXITS 2000u     /* port writes that exit to user space */
#define CAL_CODE_ADDR 0x1000
#define CAL_BUDGET_S 1.0    /* longer than this is slow, whatever the figures */

struct cal_state {
    double t_loop_done, t_end;
    unsigned marks;
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void cal_port(void *opaque, uint64_t off, uint8_t *data, unsigned len, bool is_write)
{
    struct cal_state *c = opaque;
    (void)off;
    (void)len;
    if (!is_write) {
        memset(data, 0, len);
        return;
    }
    if (c->marks++ == 0)
        c->t_loop_done = mono();
    if (c->marks == CAL_EXITS + 1)
        c->t_end = mono();
}

void vmm_calibrate(struct vmm_calibration *c)
{
    struct p2v_err e = {0};
    struct vmm_vm vm;
    struct cal_state st = {0};
    bool created = false;
    memset(c, 0, sizeof *c);

    if (vmm_kvm_available(&e) < 0) {
        snprintf(c->note, sizeof c->note, "%.250s", e.msg);
        return;
    }
    c->kvm_present = true;
    /* mov ecx,N; l: dec ecx; jnz l; mov dx,CAL; out dx,al; mov ecx,M; l2: out dx,al;
     * dec ecx; jnz l2; mov dx,EXIT; out dx,al; hlt; jmp $-1 */
    uint8_t code[] = {
        0x66, 0xb9, 0, 0, 0, 0, 0x66, 0x49, 0x75, 0xfc,
        0xba, VMM_PORT_CALIBRATE & 0xff, VMM_PORT_CALIBRATE >> 8, 0xee,
        0x66, 0xb9, 0, 0, 0, 0, 0xee, 0x66, 0x49, 0x75, 0xfb,
        0xba, VMM_PORT_DEBUG_EXIT & 0xff, VMM_PORT_DEBUG_EXIT >> 8, 0xee,
        0xf4, 0xeb, 0xfd,
    };
    p2v_put_u32le(code + 2, CAL_LOOP);
    p2v_put_u32le(code + 16, CAL_EXITS);

    if (vmm_vm_create(&vm, VMM_RAM_MIN, 1, &e) < 0)
        goto fail;
    created = true;
    memcpy(vm.mem.host + CAL_CODE_ADDR, code, sizeof code);
    if (vmm_bus_register(&vm.pio, VMM_PORT_CALIBRATE, 1, cal_port, &st, "calibrate", &e) < 0 ||
        vmm_misc_attach(&vm.pio, &vm.stop, &e) < 0 ||
        vmm_vm_setup_realmode(&vm, CAL_CODE_ADDR, &e) < 0)
        goto fail;
    double t0 = mono();
    if (vmm_vm_start(&vm, &e) < 0)
        goto fail;
    for (;;) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&vm.stop.lock);
        bool stopped = vm.stop.reason != VMM_STOP_NONE;
        pthread_mutex_unlock(&vm.stop.lock);
        if (stopped || vm.error[0] || mono() - t0 > CAL_BUDGET_S)
            break;
    }
    vmm_vm_kick(&vm);
    vmm_vm_join(&vm);
    if (vm.error[0]) {
        snprintf(c->note, sizeof c->note, "calibration guest failed: %.200s", vm.error);
        goto out;
    }
    if (st.marks == 0) {
        c->mips = 2.0 * CAL_LOOP / CAL_BUDGET_S / 1e6; /* at most this */
        snprintf(c->note, sizeof c->note,
                 "slow: the calibration loop did not finish in %.1f s (under %.0f M "
                 "instructions/s)",
                 CAL_BUDGET_S, c->mips);
        goto out;
    }
    c->mips = 2.0 * CAL_LOOP / (st.t_loop_done - t0) / 1e6;
    if (st.t_end > 0)
        c->exit_us = (st.t_end - st.t_loop_done) / CAL_EXITS * 1e6;
    c->fast = st.t_end > 0 && c->mips >= VMM_FAST_MIPS && c->exit_us <= VMM_FAST_EXIT_US;
    snprintf(c->note, sizeof c->note, "%s: %.0f M instructions/s, %.1f us per exit",
             c->fast ? "fast" : "slow", c->mips, c->exit_us);
    goto out;
fail:
    snprintf(c->note, sizeof c->note, "calibration guest failed: %.200s", e.msg);
out:
    if (created)
        vmm_vm_destroy(&vm);
}
