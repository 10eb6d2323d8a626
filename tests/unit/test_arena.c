/* SPDX-License-Identifier: Apache-2.0 */
/* The request arena: alignment, the embedded first block, growth, big one-off allocations,
 * reset. Run under ASan, it also proves that every block is freed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "sy/arena.h"

static bool inside_first(const struct sy_arena *a, const void *p)
{
    return (const char *)p >= a->first && (const char *)p < a->first + sizeof(a->first);
}

static void test_small_allocations_use_the_embedded_block(void **state)
{
    struct sy_arena a;
    sy_arena_init(&a);
    for (int i = 0; i < 20; i++) {
        char *p = sy_arena_alloc(&a, 13);
        assert_true(inside_first(&a, p));
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 'a', 13);
    }
    assert_null(a.blocks); /* nothing from malloc */
    sy_arena_reset(&a);
}

static void test_alignment_and_distinct(void **state)
{
    struct sy_arena a;
    sy_arena_init(&a);
    char *prev = NULL;
    for (size_t n = 1; n < 3000; n += 7) {
        char *p = sy_arena_alloc(&a, n);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, (int)(n & 0xff), n); /* ASan catches an overlap with a block's end */
        assert_true(p != prev);
        prev = p;
    }
    assert_non_null(a.blocks);
    sy_arena_reset(&a);
    assert_null(a.blocks);
}

static void test_growth_and_big_one_offs(void **state)
{
    struct sy_arena a;
    sy_arena_init(&a);
    char *small = sy_arena_alloc(&a, 2000);
    assert_true(inside_first(&a, small));
    char *spill = sy_arena_alloc(&a, 100); /* does not fit: a new 8 KiB block */
    assert_false(inside_first(&a, spill));
    char *big = sy_arena_alloc(&a, 100000); /* a one-off block of its own */
    memset(big, 1, 100000);
    char *after = sy_arena_alloc(&a, 16); /* still carved from the 8 KiB block */
    assert_true(after > spill && after < spill + 8192);
    sy_arena_reset(&a);
    assert_null(a.blocks);
    assert_true(inside_first(&a, sy_arena_alloc(&a, 8)));
    sy_arena_reset(&a);
}

static void test_exact_fit_and_zero(void **state)
{
    struct sy_arena a;
    sy_arena_init(&a);
    /* the whole embedded block, when it is aligned */
    size_t room = (size_t)(a.end - a.cur);
    if ((uintptr_t)a.cur % 16 == 0) {
        char *p = sy_arena_alloc(&a, room);
        assert_true(inside_first(&a, p));
        assert_null(a.blocks);
    }
    void *z = sy_arena_alloc(&a, 0);
    assert_non_null(z);
    sy_arena_reset(&a);
}

static void test_strndup(void **state)
{
    struct sy_arena a;
    sy_arena_init(&a);
    char *s = sy_arena_strndup(&a, "hello world", 5);
    assert_string_equal(s, "hello");
    char *e = sy_arena_strndup(&a, "", 0);
    assert_string_equal(e, "");
    sy_arena_reset(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_allocations_use_the_embedded_block),
        cmocka_unit_test(test_alignment_and_distinct),
        cmocka_unit_test(test_growth_and_big_one_offs),
        cmocka_unit_test(test_exact_fit_and_zero),
        cmocka_unit_test(test_strndup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
