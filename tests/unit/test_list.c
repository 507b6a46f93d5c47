/*
 * test_list: the intrusive list (include/coingest/list.h) against a reference model.
 *
 * Elements carry an id; after every operation the list is walked forwards and backwards and
 * compared with an array that holds the ids in the order the list must have them. A seeded
 * random run mixes every operation; small tests pin down the edge cases (empty lists,
 * removing twice, splicing empty lists, removing while iterating).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "coingest/list.h"
#include "coingest/util.h"

struct item {
    int id;
    struct list_link link;
};

#define ITEM_OF(l) LIST_CONTAINER_OF(l, struct item, link)

/* Walks `head` both ways and checks it holds exactly want[0..n), in order. */
static void check_list(const struct list_link *head, const int *want, size_t n)
{
    size_t i = 0;
    const struct list_link *l;
    LIST_FOR_EACH (l, head) {
        assert_true(i < n);
        assert_int_equal(ITEM_OF(l)->id, want[i]);
        assert_ptr_equal(l->next->prev, l);
        i++;
    }
    assert_int_equal(i, n);
    for (l = head->prev; l != head; l = l->prev) {
        assert_true(i > 0);
        assert_int_equal(ITEM_OF(l)->id, want[--i]);
    }
    assert_int_equal(i, 0);
    assert_int_equal(list_empty(head), n == 0);
    if (n == 0)
        assert_null(list_first(head));
    else
        assert_int_equal(ITEM_OF(list_first(head))->id, want[0]);
}

static void test_empty_and_single(void **state)
{
    (void)state;
    struct list_link head;
    struct item a = {.id = 1};
    list_init(&head);
    check_list(&head, NULL, 0);

    list_init(&a.link);
    assert_false(list_linked(&a.link));
    list_remove(&a.link); /* in no list: nothing happens */
    assert_false(list_linked(&a.link));

    list_append(&head, &a.link);
    assert_true(list_linked(&a.link));
    check_list(&head, (int[]){1}, 1);

    list_remove(&a.link);
    assert_false(list_linked(&a.link));
    check_list(&head, NULL, 0);
    list_remove(&a.link); /* removing twice is harmless */
    check_list(&head, NULL, 0);
}

static void test_container_of(void **state)
{
    (void)state;
    struct item it = {.id = 7};
    struct list_link *l = &it.link;
    assert_ptr_equal(LIST_CONTAINER_OF(l, struct item, link), &it);
    assert_int_equal(ITEM_OF(l)->id, 7);
}

static void test_insert_after_and_splice(void **state)
{
    (void)state;
    struct list_link a, b;
    struct item it[6];
    list_init(&a);
    list_init(&b);
    for (int i = 0; i < 6; i++)
        it[i].id = i;
    list_append(&a, &it[0].link);
    list_append(&a, &it[2].link);
    list_insert_after(&it[0].link, &it[1].link);
    list_insert_after(&a, &it[5].link); /* after the head: first */
    check_list(&a, (int[]){5, 0, 1, 2}, 4);

    list_splice(&b, &a); /* empty into non-empty: no change */
    check_list(&a, (int[]){5, 0, 1, 2}, 4);
    check_list(&b, NULL, 0);

    list_append(&b, &it[3].link);
    list_append(&b, &it[4].link);
    list_splice(&b, &a);
    check_list(&a, (int[]){5, 0, 1, 2, 3, 4}, 6);
    check_list(&b, NULL, 0);

    list_splice(&a, &b); /* non-empty into empty */
    check_list(&b, (int[]){5, 0, 1, 2, 3, 4}, 6);
    check_list(&a, NULL, 0);
}

static void test_remove_while_iterating(void **state)
{
    (void)state;
    struct list_link head, *l, *tmp;
    list_init(&head);
    for (int i = 0; i < 10; i++) {
        struct item *it = malloc(sizeof(*it));
        assert_non_null(it);
        it->id = i;
        list_append(&head, &it->link);
    }
    /* Drop the odd ones, freeing them inside the walk. */
    LIST_FOR_EACH_SAFE (l, tmp, &head) {
        if (ITEM_OF(l)->id % 2) {
            list_remove(l);
            free(ITEM_OF(l));
        }
    }
    check_list(&head, (int[]){0, 2, 4, 6, 8}, 5);
    LIST_FOR_EACH_SAFE (l, tmp, &head) {
        list_remove(l);
        free(ITEM_OF(l));
    }
    check_list(&head, NULL, 0);
    /* On an empty list the body never runs. */
    int runs = 0;
    LIST_FOR_EACH_SAFE (l, tmp, &head)
        runs++;
    LIST_FOR_EACH (l, &head)
        runs++;
    assert_int_equal(runs, 0);
}

/* Random operations on two lists, each mirrored in an array. */
#define N 64

struct model {
    int ids[N];
    size_t n;
};

static void model_insert(struct model *m, size_t at, int id)
{
    for (size_t i = m->n; i > at; i--)
        m->ids[i] = m->ids[i - 1];
    m->ids[at] = id;
    m->n++;
}

static void model_delete(struct model *m, int id)
{
    size_t i = 0;
    while (m->ids[i] != id)
        i++;
    for (; i + 1 < m->n; i++)
        m->ids[i] = m->ids[i + 1];
    m->n--;
}

static size_t model_index(const struct model *m, int id)
{
    size_t i = 0;
    while (m->ids[i] != id)
        i++;
    return i;
}

static void test_random_against_model(void **state)
{
    (void)state;
    struct item items[N];
    int where[N]; /* -1: in no list, else which list */
    struct list_link heads[2];
    struct model models[2] = {0};
    struct rng r;
    rng_seed(&r, 11);
    list_init(&heads[0]);
    list_init(&heads[1]);
    for (int i = 0; i < N; i++) {
        items[i].id = i;
        list_init(&items[i].link);
        where[i] = -1;
    }
    for (int step = 0; step < 20000; step++) {
        int i = (int)rng_below(&r, N);
        int k = (int)rng_below(&r, 2);
        switch (rng_below(&r, 4)) {
        case 0: /* append, or remove when linked */
            if (where[i] < 0) {
                list_append(&heads[k], &items[i].link);
                model_insert(&models[k], models[k].n, i);
                where[i] = k;
            } else {
                list_remove(&items[i].link);
                model_delete(&models[where[i]], i);
                where[i] = -1;
            }
            break;
        case 1: { /* insert after a random linked item of list k, or after the head */
            int j = (int)rng_below(&r, N);
            if (where[i] >= 0)
                break;
            if (where[j] == k) {
                list_insert_after(&items[j].link, &items[i].link);
                model_insert(&models[k], model_index(&models[k], j) + 1, i);
            } else {
                list_insert_after(&heads[k], &items[i].link);
                model_insert(&models[k], 0, i);
            }
            where[i] = k;
            break;
        }
        case 2: /* remove (twice when not linked: a no-op) */
            list_remove(&items[i].link);
            if (where[i] >= 0)
                model_delete(&models[where[i]], i);
            where[i] = -1;
            break;
        case 3: /* splice list k onto the other, rarely, so lists grow long */
            if (rng_below(&r, 16) == 0) {
                struct model *from = &models[k], *to = &models[1 - k];
                list_splice(&heads[k], &heads[1 - k]);
                for (size_t x = 0; x < from->n; x++) {
                    where[from->ids[x]] = 1 - k;
                    to->ids[to->n++] = from->ids[x];
                }
                from->n = 0;
            }
            break;
        }
        for (int h = 0; h < 2; h++)
            check_list(&heads[h], models[h].ids, models[h].n);
        assert_int_equal(list_linked(&items[i].link), where[i] >= 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_single),
        cmocka_unit_test(test_container_of),
        cmocka_unit_test(test_insert_after_and_splice),
        cmocka_unit_test(test_remove_while_iterating),
        cmocka_unit_test(test_random_against_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
