/* SPDX-License-Identifier: Apache-2.0 */
/** switchyard-dataplane: read the settings, then hand over to the master process (master.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "sy/log.h"

#include "internal.h"

int main(int argc, char **argv)
{
    struct dp_config c;
    char *err = NULL;

    int rc = dp_config_load(&c, argc, argv, &err);
    if (rc == 1)
        return 0; /* --help or --version */
    if (rc != 0) {
        fprintf(stderr, "switchyard-dataplane: %s\n", err);
        free(err);
        return 2;
    }
    /* dp_config_load() validated the name. */
    sy_log_set_level(c.log_level);
    sy_log_set_ident("dataplane");
    /* A peer that closes early must give EPIPE on write, not kill the process. Workers inherit
     * this disposition through fork. */
    signal(SIGPIPE, SIG_IGN);

    rc = dp_master_run(&c);
    dp_config_free(&c);
    return rc;
}
