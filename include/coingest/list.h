/*
 * list: an intrusive, circular, doubly-linked list (the one every module uses).
 *
 * A list is a head `struct list_link` (the sentinel) and elements that embed a
 * `struct list_link` member; LIST_CONTAINER_OF gets from a link back to its element. Nothing is
 * allocated: linking and unlinking are O(1) pointer updates, and the list never owns its
 * elements (the caller frees them, after unlinking).
 *
 * An empty head, and a link that is in no list, point at themselves. list_init makes them so;
 * list_remove leaves a removed link so, which makes removing twice harmless and lets
 * list_linked tell whether a link is in a list. A zero-filled link is neither: initialise
 * every head and every link before its first use (appending counts as initialising a link).
 *
 * Iteration: LIST_FOR_EACH visits links in order and must not remove the current one;
 * LIST_FOR_EACH_SAFE may remove (and free) the current element. To drain a list, take
 * list_first until it returns NULL.
 *
 * Thread: none of its own; a list is guarded by whatever guards the structure holding it.
 */
#ifndef COINGEST_LIST_H
#define COINGEST_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct list_link {
    struct list_link *prev, *next;
};

/* The element of type `type` whose member `member` is the link `ptr`. */
#define LIST_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* `pos` (a struct list_link *) walks the links of `head` in order. The loop body must not
 * unlink `pos`. */
#define LIST_FOR_EACH(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* As LIST_FOR_EACH, but the body may unlink (and free) `pos`; `tmp` is scratch. */
#define LIST_FOR_EACH_SAFE(pos, tmp, head)                                                         \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                               \
         (pos) = (tmp), (tmp) = (pos)->next)

/* Makes `l` an empty list head, or a link that is in no list. */
static inline void list_init(struct list_link *l)
{
    l->prev = l->next = l;
}

/* True when the list `head` has no elements. */
static inline bool list_empty(const struct list_link *head)
{
    return head->next == head;
}

/* True when `n` (initialised) is in a list. */
static inline bool list_linked(const struct list_link *n)
{
    return n->next != n;
}

/* The first link of `head`, or NULL when the list is empty. */
static inline struct list_link *list_first(const struct list_link *head)
{
    return head->next == head ? NULL : head->next;
}

/* Links `n` (in no list) right after `pos`, which is the head or a link of a list. */
static inline void list_insert_after(struct list_link *pos, struct list_link *n)
{
    n->prev = pos;
    n->next = pos->next;
    pos->next->prev = n;
    pos->next = n;
}

/* Links `n` (in no list) at the end of `head`. */
static inline void list_append(struct list_link *head, struct list_link *n)
{
    list_insert_after(head->prev, n);
}

/* Unlinks `n` from its list and leaves it in none; a no-op when it is in none already. */
static inline void list_remove(struct list_link *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* Moves every element of `from`, in order, to the end of `to`; `from` ends empty. */
static inline void list_splice(struct list_link *from, struct list_link *to)
{
    if (list_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    list_init(from);
}

#endif
