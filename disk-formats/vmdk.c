/* vmdk.c: placeholder until the vmdk driver lands. */
#include <errno.h>

#include "diskfmt-int.h"

static int vmdk_probe(const uint8_t *head, size_t head_len, const uint8_t *tail,
                      uint64_t file_size)
{
    return 0;
}

static int vmdk_open(struct diskfmt *d, unsigned flags, struct p2v_err *err)
{
    return p2v_err_set(err, ENOTSUP, "'%s': the vmdk format is not implemented yet", d->path);
}

static int vmdk_close(struct diskfmt *d, bool finish, struct p2v_err *err)
{
    return 0;
}

const struct diskfmt_ops diskfmt_vmdk_ops = {
    .name = "vmdk",
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
};
