/* SPDX-License-Identifier: Apache-2.0 */
/** Placeholder for the daemon (admin API, publisher); replaced by the serve issue. */
#include <stdio.h>

#include "internal.h"

int cp_serve(int argc, char **argv)
{
    fprintf(stderr, "switchyard-controlplane: serve: not yet\n");
    return 1;
}
