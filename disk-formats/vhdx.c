/* vhdx.c: placeholder until the vhdx driver lands. */
#include <errno.h>

#include "diskfmt-int.h"

static int vhdx_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                      uint64_t file_size)
{
    return 0;
}

static int vhdx_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    return p2v_err_set(err, ENOTSUP, "'%s': the vhdx format is not implemented yet", d->path);
}

static int vhdx_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    return 0;
}

const struct diskfmt_ops diskfmt_vhdx_ops = {
    .name = "vhdx",
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
};
