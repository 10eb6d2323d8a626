/* SPDX-License-Identifier: Apache-2.0 */
/** The publisher (compile the config into routing tables, push them to the data plane). */
#include <jansson.h>

#include "server.h"

int cp__publisher_start(struct cp_server *cp, char **err)
{
    return 0;
}

void cp__publisher_stop(struct cp_server *cp)
{
}

void cp__publisher_db_state(struct cp_server *cp, bool up)
{
}

json_t *cp__publisher_status(struct cp_server *cp)
{
    return json_object();
}
