/* qcow2.c: placeholder until the qcow2 driver lands. */
#include <errno.h>

#include "diskfmt-int.h"

static int qcow2_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                      uint64_t file_size)
{
    return 0;
}

static int qcow2_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    return p2v_err_set(err, ENOTSUP, "'%s': the qcow2 format is not implemented yet", d->path);
}

static int qcow2_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    return 0;
}

const struct diskfmt_ops diskfmt_qcow2_ops = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
};
