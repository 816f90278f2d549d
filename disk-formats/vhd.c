/* vhd.c: placeholder until the vhd driver lands. */
#include <errno.h>

#include "diskfmt-int.h"

static int vhd_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                      uint64_t file_size)
{
    return 0;
}

static int vhd_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    return p2v_err_set(err, ENOTSUP, "'%s': the vhd format is not implemented yet", d->path);
}

static int vhd_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    return 0;
}

const struct diskfmt_ops diskfmt_vhd_ops = {
    .name = "vhd",
    .probe = vhd_probe,
    .open = vhd_open,
    .close = vhd_close,
};
