/*
 * The HTTP request path of AegisMiddleware, compiled: what its parts share.
 *
 * It does exactly what the pure-Python path in middleware.py does (that path
 * stays the reference and the fallback), at a fraction of the cost: in pure
 * Python the two wrappers every ASGI middleware needs around `send` and
 * `receive`, the per-request state and the garbage-collector work they cause
 * cost several microseconds per request.
 *
 * The types, one file each:
 *
 * - HttpPath (asgi_path.c): one per middleware. Called with (scope, receive,
 *   send) when the server calls the middleware (its class's tp_call is
 *   direct_call), or by the middleware's `async def __call__`, it returns an
 *   Exchange, which starts the app at its first step.
 * - Exchange (exchange.c, finish.c): one per call, the awaitable that drives
 *   the app's coroutine (forwarding send/throw/close exactly like `await`
 *   does), or, unrecorded, the middleware's Python code for a scope other than
 *   HTTP or an excluded path. When the app's coroutine ends it queues the
 *   request's item in the inbox. The server, or the middleware's coroutine,
 *   holds it; the app never sees it.
 * - Sender (sender.c): the `send` callable handed to the app, which notes
 *   status, times and bytes and returns the server's own awaitable untouched.
 * - Receiver (receiver.c): the `receive` callable handed to the app. Calling
 *   it returns a native coroutine of a Python function, so `receive()` stays a
 *   real coroutine for every framework that checks.
 * - HttpItem (item.c): the request's state while it runs and its inbox item
 *   afterwards (the 13-field layout of aegis_mw/core/items.py, readable and
 *   writable by index). Once queued, an item holding only strings, numbers and
 *   the client tuple leaves the garbage collector's lists, as a tuple of atoms
 *   does: thousands of them waiting in the inbox cost the collector nothing.
 * - WsgiPath (wsgi_path.c), StartResponse and Writer (wsgi_start.c), WsgiResponse
 *   (wsgi_response.c, wsgi_finish.c): the WSGI middleware's, one start_response
 *   for the app and one response iterable for the server per request, kept
 *   apart so that nothing the app holds leads to what the server iterates.
 * - DjangoPath (django_path.c) and DjangoCloser (django_closer.c): Django's,
 *   under a sync handler.
 *
 * Only the common, well-formed case is handled here. Anything else is handed
 * to the Python code, so it behaves exactly as the Python path does: an
 * unusual message (not a dict, a field of an unexpected type) goes to the
 * Python send observer; the app raising, an unfinished response, a custom
 * route reader and trusted proxies go to methods of the middleware. A failure
 * of ours is counted, never turned into an error of the request (unless it is
 * not an Exception: KeyboardInterrupt and cancellation always propagate), and
 * the app's own exception always propagates unchanged.
 */
#ifndef AEGIS_HOTPATH_H
#define AEGIS_HOTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <time.h>

#if defined(__linux__) && defined(CLOCK_MONOTONIC)
#define AEGIS_NATIVE_MONOTONIC 1
#else
#define AEGIS_NATIVE_MONOTONIC 0
#endif

/* Interned strings, created once at import (module.c). */
struct aegis_strings {
    PyObject *type, *body, *more_body, *status, *count, *path, *method, *client, *route,
        *get, *wake_flusher, *refuse, *empty, *queue_failed, *settle_unfinished,
        *internal_error, *forwarded, *throw, *close, *trace_source, *headers,
        *environ_traceparent, *http, *compiled, *dunder_call;
    /* the WSGI path's */
    PyObject *path_info, *request_method, *script_name, *remote_addr, *remote_port,
        *wsgi_input, *content_length, *transfer_encoding, *file_wrapper, *aegis_route,
        *aegis_error,
        *method_get, *method_head, *slash, *start, *queue, *forwarded_for,
        *iteration_failed, *watch_file;
    /* the Django path's */
    PyObject *path_info_attribute, *meta, *status_code, *streaming, *container,
        *resource_closers, *resolver_match, *item_attribute, *serve_mounted, *raised,
        *watch_stream, *template, *process_exception, *popleft;
    /* a span's context, read by the finalizer (finalize.c) */
    PyObject *get_span_context, *is_valid, *trace_id, *span_id, *hex32, *hex16;
};
extern struct aegis_strings aegis_str;

/* functools.partial, for the rare receive() called with arguments. */
extern PyObject *aegis_partial;

/* Item indexes, as in aegis_mw/core/items.py. */
enum {
    I_METHOD, I_ROUTE, I_PATH, I_STATUS, I_START, I_TTFB, I_END,
    I_REQUEST_BYTES, I_RESPONSE_BYTES, I_CLIENT, I_FORWARDED, I_ERROR,
    I_DISCONNECTED, I_TRACE, I_FIELDS
};

/* The request's state and inbox item (item.c). */
typedef struct {
    PyObject_HEAD
    PyObject *method;
    PyObject *route;      /* NULL: None */
    PyObject *path;
    PyObject *status;
    PyObject *client;
    PyObject *forwarded;  /* NULL: None */
    PyObject *error;
    /* The trace context, read where it is current (OpenTelemetry's span) or
     * the incoming traceparent header, parsed by the flusher. NULL: None */
    PyObject *trace;
    double start, ttfb, end;
    long long request_bytes, response_bytes;
    /* A byte count the long long cannot hold (past 64 bits), or one that is not
     * an exact int (a float an app sent): kept as the Python path's list keeps
     * it, and added to as Python adds. NULL: the long long holds the count. */
    PyObject *request_count, *response_count;
    char has_ttfb, has_end, disconnected;
} ItemObject;

/* What the ASGI and the WSGI path share: the middleware whose methods take the
 * slow paths, the clock, and the recorder's inbox (recording.c). */
typedef struct {
    PyObject *owner;       /* the middleware: slow paths are its methods */
    PyObject *clock;       /* the pipeline's monotonic clock (a Python callable) */
    int native_clock;      /* it is CLOCK_MONOTONIC: read it without calling Python */
    PyObject *recorder;
    PyObject *bounds;      /* Recorder.bounds: [limit, wake_at] */
    PyObject *inbox;
    PyObject *append;      /* inbox.append */
    Py_ssize_t in_flight;  /* requests started and not yet finished */
    /* The trace context (aegis_mw/core/trace_context.py): OpenTelemetry's
     * context variable and the current span's key (NULL: not installed). */
    PyObject *trace_var, *trace_key;
    int trace;             /* the trace_context setting: look at all */
} AegisRecording;

/* One per ASGI middleware (asgi_path.c). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    AegisRecording rec;
    PyObject *app;
    PyObject *bypass;      /* for excluded paths: the middleware's pass_through */
    PyObject *templates;   /* dict: id(route object) -> template */
    PyObject *read_route;  /* called when templates has no answer */
    PyObject *exclusions;  /* PathFilter.current: [literal set, match or None] */
    PyObject *observe_send;     /* observers.observe_send(item, clock, send) */
    PyObject *observe_receive;  /* async observers.observe_receive(item, receive) */
    PyObject *throw_quietly;    /* compiled.throw_quietly(throw, *args) */
    PyObject *other;       /* scopes other than HTTP: the middleware's serve_other */
    int check_forwarded;
    PyObject *weakreflist;
} HttpPathObject;

/* One per WSGI middleware (wsgi_path.c). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    AegisRecording rec;
    PyObject *app;
    PyObject *bypass;          /* excluded paths: the middleware's serve_excluded */
    PyObject *fallback;        /* an environ that is not a dict: its call_python */
    PyObject *exclusions;      /* PathFilter.current: [literal set, match or None] */
    PyObject *read_route;      /* None, or called with the environ when nothing below names it */
    PyObject *route_key;       /* NULL, or where an integration leaves the route object */
    PyObject *templates;       /* NULL, or dict: id(route object) -> template */
    PyObject *status_code;     /* the Python parser, for a status line out of the usual */
    PyObject *counting_input;  /* wraps wsgi.input: (stream, item) -> stream */
    PyObject *start_arguments; /* the Python path's start_response signature, for odd calls */
    PyObject *write_arguments; /* the same for write() */
    PyObject *unmatched;       /* the route of a request nothing names */
    int check_forwarded;
    char started;              /* the pipeline was started in this process */
    PyObject *weakreflist;
} WsgiPathObject;

struct WsgiWriterObject;

/* The start_response the app is given, one per WSGI request (wsgi_start.c).
 * It leads to nothing the server iterates: an app that returns it, or
 * iterates it, gets a TypeError, as with the Python path's function, and an
 * app generator holding it makes no reference cycle with the response. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    WsgiPathObject *path;
    ItemObject *item;
    PyObject *start_response;   /* the server's */
    PyObject *write;            /* what the server's start_response returned last */
    PyObject *headers;          /* the headers last given */
    struct WsgiWriterObject *writer;  /* borrowed: the live write() it returned, or NULL */
} WsgiStartObject;

/* The write() callable start_response returns (wsgi_start.c): the same one
 * for every call while the app holds it, as the Python path's closure is. */
typedef struct WsgiWriterObject {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    WsgiStartObject *start;
} WsgiWriterObject;

/* The response iterable the server gets, one per WSGI request
 * (wsgi_response.c), timed to its close(). */
typedef struct {
    PyObject_HEAD
    WsgiPathObject *path;
    ItemObject *item;
    PyObject *environ;          /* released when the request is finished */
    PyObject *result;           /* the app's iterable */
    PyObject *iterator;         /* iter(result), from the first next(), until the pass ends */
    char finished;              /* closed */
    char exhausted;             /* the one pass over result ended, or raised */
    char running;               /* inside a next(): no re-entry (as a generator refuses it) */
} WsgiResponseObject;

/* One per Django AegisMiddleware under a sync handler (django_path.c). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    AegisRecording rec;
    PyObject *get_response;
    PyObject *mounted;     /* dict: the paths the middleware serves itself */
    PyObject *exclusions;  /* list [literal set, match or None]: never recorded */
    PyObject *templates;   /* dict: resolver pattern -> template (the owner's) */
    PyObject *unmatched;   /* the route of a request no pattern matched */
    int check_forwarded;
    PyObject *weakreflist;
} DjangoPathObject;

/* What a Django response's close() calls to end the request (django_path.c). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    DjangoPathObject *path;
    ItemObject *item;     /* NULL once called */
    PyObject *request;
} DjangoCloserObject;

/* One per request (exchange.c, finish.c). */
typedef struct {
    PyObject_HEAD
    HttpPathObject *path;
    ItemObject *item;
    PyObject *scope;   /* released when the request is queued (NULL: not recorded) */
    PyObject *inner;   /* the app's awaitable iterator; released when it ends */
    /* Until its first step the call's receive and send, then NULL: like a
     * coroutine's body, nothing of the call runs before it is awaited. */
    PyObject *receive, *send;
    char running;      /* inside a step of `inner`: no re-entry */
    char awaited;      /* awaited by a coroutine (its throw() warns, not ours) */
} ExchangeObject;

/* The app's send (sender.c). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    HttpPathObject *path;
    ItemObject *item;
    PyObject *send;
} SenderObject;

/* The app's receive (receiver.c). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    HttpPathObject *path;
    ItemObject *item;
    PyObject *receive;
} ReceiverObject;

extern PyTypeObject AegisItemType, AegisHttpPathType, AegisExchangeType, AegisSenderType,
    AegisReceiverType, AegisWsgiPathType, AegisWsgiStartType, AegisWsgiResponseType,
    AegisWsgiSizedResponseType, AegisWsgiWriterType, AegisDjangoPathType, AegisDjangoCloserType;

/* item.c */
ItemObject *aegis_new_item(PyObject *method, PyObject *request_path, PyObject *client);
void aegis_item_set(ItemObject *item, Py_ssize_t index, PyObject *value);
int aegis_item_add_bytes(ItemObject *item, Py_ssize_t index, long long size);
int aegis_item_set_bytes(ItemObject *item, Py_ssize_t index, PyObject *value);
void aegis_item_zero_bytes(ItemObject *item, Py_ssize_t index);
int aegis_item_count_chunks(ItemObject *item, Py_ssize_t index, PyObject *chunks);
void aegis_untrack_if_atomic(ItemObject *item);
PyObject *aegis_item_from_fields(PyObject *module, PyObject *fields);

/* finalize.c: a RequestRecord's field count (aegis_mw/core/record.py). */
#define RECORD_FIELDS 14
PyObject *aegis_finalize_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* free_lists.c */
ItemObject *aegis_reused_item(void);
int aegis_keep_item(ItemObject *item);
PyObject *aegis_reused_record(PyTypeObject *type);
PyObject *aegis_reuse_records(PyObject *module, PyObject *type);
PyObject *aegis_free_list_sizes(PyObject *module, PyObject *unused);
PyObject *aegis_clear_free_lists(PyObject *module, PyObject *unused);
void aegis_free_lists_init(void);
int aegis_finalize_init(void);

/* fold.c */
PyObject *aegis_fold_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *aegis_fold_layout(void);

/* The pipeline loops' calling convention (fold_items, finalize_items,
 * FoldPending), as aegis_mw.core.pending_sums.PIPELINE_LOOPS expects it: a
 * module built for another is not used by that code. */
#define AEGIS_PIPELINE_LOOPS 3

/* fold_pending.c: the compiled loops' sums not yet written into the lists
 * (the fold's ring slots, series and request counts; finalize's rollup
 * cells). */
enum { PENDING_NONE, PENDING_INT, PENDING_FLOAT };
#define PENDING_LISTS 512
#define PENDING_COUNTS 512
#define PENDING_TABLE_BITS 10
#define PENDING_TABLE (1 << PENDING_TABLE_BITS) /* twice the most entries: short probes */
#if PENDING_TABLE < 2 * PENDING_LISTS || PENDING_TABLE < 2 * PENDING_COUNTS || PENDING_TABLE > 32767
#error "the pending sums' tables must have room to spare and index with a short"
#endif

typedef struct {
    PyObject *list;          /* held */
    Py_ssize_t list_length;  /* the list's */
    /* Positions from dict_base on are the keys 0, 1, ... of `dict` (held),
     * the list's item at dict_base - 1 (a rollup cell's histogram); without
     * a dict, dict_base is the list's length. */
    PyObject *dict;
    Py_ssize_t dict_base;
    Py_ssize_t length;       /* positions */
    long long *ints;         /* per position: the delta of an int */
    double *floats;          /* per position: the new value of a float */
    Py_ssize_t *touched;     /* the positions with a kind, in the order first touched */
    unsigned char *kind;     /* per position: PENDING_NONE, _INT or _FLOAT */
    Py_ssize_t touched_count;
} PendingList;

typedef struct {
    PyObject *key;           /* held */
    long long delta;
} PendingCount;

/* A rollup cell's key, (bucket, route, method, class), remembered with the
 * cell's pending sums: route and method held, compared by identity. */
typedef struct {
    long long bucket;
    PyObject *route, *method;
    long klass;
    PendingList *sums;
} PendingKey;

typedef struct {
    PyObject_HEAD
    PyObject *ring, *requests;  /* the fold's (NULL for rollup cells) */
    PyObject *cells;         /* held: the rollup cells dict the keys were found in */
    long long items;         /* items folded since the last settle */
    Py_ssize_t list_count, count_count, key_count;
    PendingList lists[PENDING_LISTS];
    PendingCount counts[PENDING_COUNTS];
    PendingKey keys[PENDING_LISTS];
    short list_table[PENDING_TABLE];  /* index + 1 into lists, 0 for none */
    short count_table[PENDING_TABLE];
    short key_table[PENDING_TABLE];
} FoldPendingObject;

extern PyTypeObject AegisFoldPendingType;
PendingList *aegis_pending_list(FoldPendingObject *pending, PyObject *list, Py_ssize_t length);
PendingList *aegis_pending_cell(FoldPendingObject *pending, PyObject *cell, Py_ssize_t fields,
                                Py_ssize_t buckets);
long long *aegis_pending_count(FoldPendingObject *pending, PyObject *key);
PendingList *aegis_pending_key(FoldPendingObject *pending, long long bucket, PyObject *route,
                               PyObject *method, long klass);
void aegis_pending_remember(FoldPendingObject *pending, long long bucket, PyObject *route,
                            PyObject *method, long klass, PendingList *sums);
void aegis_pending_cells(FoldPendingObject *pending, PyObject *cells);
int aegis_pending_settle(FoldPendingObject *pending);

/* pg_copy.c */
PyObject *aegis_pg_copy_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* sqlite_rows.c */
PyObject *aegis_sqlite_rows_init(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *aegis_sqlite_filename(PyObject *module, PyObject *connection);
PyObject *aegis_sqlite_insert_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *aegis_sqlite_rows_cache(PyObject *module, PyObject *unused);

/* column_range.c: a block's time range for the SQLite sink */
PyObject *aegis_column_range(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* deque_take.c: many items off a deque's left end (aegis_mw.core.deque_take) */
PyObject *aegis_take_left(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *aegis_split_left(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* histogram_text.c: the rollups' histograms as stored text */
PyObject *aegis_histogram_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *aegis_histogram_merge_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* recording.c */
int aegis_recording_init(AegisRecording *rec, PyObject *owner, PyObject *clock, int native_clock,
                         PyObject *recorder);
int aegis_recording_traverse(AegisRecording *rec, visitproc visit, void *arg);
void aegis_recording_clear(AegisRecording *rec);
int aegis_queue_item(AegisRecording *rec, ItemObject *item);
int aegis_trace_from_headers(AegisRecording *rec, ItemObject *item, PyObject *scope);
int aegis_trace_from_environ(AegisRecording *rec, ItemObject *item, PyObject *environ);
int aegis_trace_at_response(AegisRecording *rec, ItemObject *item);
int aegis_own_failure(AegisRecording *rec);
void aegis_keep_original(AegisRecording *rec, PyObject *original);
int aegis_excluded(PyObject *exclusions, PyObject *request_path);
int aegis_refuse_init_again(PyObject *self, vectorcallfunc initialised);

/* environ.c */
int aegis_truthy(PyObject *value);
PyObject *aegis_number_or_zero(PyObject *value);
PyObject *aegis_client_of(PyObject *environ);
int aegis_is_head(PyObject *method);

/* sender.c */
PyObject *aegis_sender_call(PyObject *op, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames);

/* finish.c */
int aegis_finish_returned(ExchangeObject *self);
/* asgi_path.c: the first step of a call; -1 with the exception set. */
int aegis_exchange_start(ExchangeObject *self);
PyObject *aegis_call_directly(PyObject *module, PyObject *cls);
void aegis_finish_raised(ExchangeObject *self);

/* wsgi_start.c */
WsgiStartObject *aegis_wsgi_start_new(WsgiPathObject *path, ItemObject *item,
                                      PyObject *start_response);
int aegis_wsgi_count_chunk(WsgiPathObject *path, ItemObject *item, PyObject *chunk);

/* wsgi_response.c */
PyObject *aegis_wsgi_respond(WsgiPathObject *path, ItemObject *item, PyObject *environ,
                             WsgiStartObject *start, PyObject *result);
void aegis_wsgi_app_raised(WsgiPathObject *path, ItemObject *item, PyObject *environ);

/* wsgi_finish.c */
int aegis_wsgi_queue_closed(WsgiPathObject *path, ItemObject *item, PyObject *environ);

/* django_closer.c */
DjangoCloserObject *aegis_django_closer_new(DjangoPathObject *path, ItemObject *item,
                                           PyObject *request);

/* receiver.c */
PyObject *aegis_receiver_call(PyObject *op, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames);

/* A shared list our owners update in place (Recorder.bounds,
 * PathFilter.current): a borrowed element, checked, no attribute lookup. */
static inline PyObject *
shared(PyObject *list, Py_ssize_t index)
{
    if (!PyList_CheckExact(list) || PyList_GET_SIZE(list) <= index) {
        PyErr_SetString(PyExc_RuntimeError, "aegis_mw: a shared list lost its shape");
        return NULL;
    }
    return PyList_GET_ITEM(list, index);
}

/* The raised exception, out of the error indicator, normalised and carrying
 * its traceback (PyErr_GetRaisedException before Python 3.12). */
static inline PyObject *
fetch_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
#endif
}

/* The raised exception, taken out of the error indicator: never NULL, so it
 * can be passed on as an argument. A failure reported without an exception
 * (a bug, of ours or of a C extension's) becomes a SystemError saying so. */
static inline PyObject *
take_exception(void)
{
    PyObject *exc = fetch_exception();
    if (exc == NULL) {
        PyErr_SetString(PyExc_SystemError, "aegis_mw: a failure without an exception set");
        exc = fetch_exception();
    }
    return exc;
}

/* Raise `exc` again (steals the reference). */
static inline void
restore_exception(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

/* The StopIteration set becomes a RuntimeError(message) caused by it, as
 * CPython turns a StopIteration leaving a generator or a coroutine (PEP 479). */
static inline void
stop_iteration_to_runtime_error(const char *message)
{
    PyObject *stop = take_exception();
    PyErr_SetString(PyExc_RuntimeError, message);
    PyObject *error = take_exception();
    PyException_SetCause(error, Py_NewRef(stop));
    PyException_SetContext(error, stop);
    restore_exception(error);
}

/* *sum = a + b, unless that overflows a long long: 1 then (*sum unchanged). */
static inline int
aegis_add_overflows(long long a, long long b, long long *sum)
{
#if defined(__GNUC__) || defined(__clang__)
    long long result;
    if (__builtin_add_overflow(a, b, &result)) {
        return 1;
    }
    *sum = result;
    return 0;
#else
    if ((b > 0 && a > LLONG_MAX - b) || (b < 0 && a < LLONG_MIN - b)) {
        return 1;
    }
    *sum = a + b;
    return 0;
#endif
}

/* getattr(object, name) when it may well be absent: 1 found, 0 absent, -1 error.
 * Before Python 3.13 it is the interpreter's own _PyObject_LookupAttr, which,
 * like PyObject_GetOptionalAttr since, finds an attribute absent without
 * raising and clearing an AttributeError (a list response has no close(): that
 * exception would cost more than the rest of the request's close). */
static inline int
aegis_optional_attr(PyObject *object, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(object, name, result);
#else
    return _PyObject_LookupAttr(object, name, result);
#endif
}

/* The clock. */

#if AEGIS_NATIVE_MONOTONIC
/* The same reading, in the same units and rounding, as time.perf_counter()
 * and time.monotonic() on Linux (both are CLOCK_MONOTONIC there). */
static inline double
aegis_native_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (ns % 1000000000LL == 0) {
        return (double)(ns / 1000000000LL);
    }
    return (double)ns / 1e9;
}
#endif

/* A clock reading into *out: 0, or -1 with the clock's exception set (the
 * Python path lets it propagate too). */
static inline int
aegis_now(AegisRecording *rec, double *out)
{
#if AEGIS_NATIVE_MONOTONIC
    if (rec->native_clock) {
        *out = aegis_native_monotonic();
        return 0;
    }
#endif
    PyObject *reading = PyObject_CallNoArgs(rec->clock);
    if (reading == NULL) {
        return -1;
    }
    double value = PyFloat_AsDouble(reading);
    Py_DECREF(reading);
    if (value == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    *out = value;
    return 0;
}

/* The pipeline loops (finalize.c, fold.c) share these two. */

/* value + delta for a plain int a long long holds, as a new int; NULL with
 * no error set for any other value or a sum past 64 bits (the caller leaves
 * the item to the Python code), NULL with an error when out of memory. */
static inline PyObject *
aegis_int_plus(PyObject *value, long long delta)
{
    if (!PyLong_CheckExact(value)) {
        return NULL;
    }
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    long long sum;
    if (overflow || (number == -1 && PyErr_Occurred())
        || aegis_add_overflows(number, delta, &sum)) {
        PyErr_Clear();
        return NULL;
    }
    return PyLong_FromLongLong(sum);
}

/* aegis_mw.core.histogram.bucket_index(duration_ms) for a finite duration,
 * with that module's LOW_MS, _SCALE, _SHIFT and _LAST (passed in by the
 * Python side, so the two cannot disagree): the same operations in the same
 * order, so the same bucket (the extension is built without contracting
 * a*b+c, see setup.py). */
static inline long
aegis_duration_bucket(double duration_ms, double low_ms, double scale, double shift, long last)
{
    if (duration_ms <= low_ms) {
        return 0;
    }
    double position = log(duration_ms) * scale;
    position = position + shift;
    long index = (long)position + 1;
    return index < last ? index : last;
}

/* The compiled loops' pending sums (fold_pending.c): whether a position can
 * take them, and adding to them. A list position's value must be a plain int
 * (for counts) or a float (an int too, for a sum that Python starts at int
 * 0); a dict position's (a histogram's bucket) a plain int or none. Positions
 * with sums pending already can. Checks come first, then the changes, which
 * cannot fail. */
static inline int
aegis_can_count(PendingList *entry, Py_ssize_t position)
{
    if (entry->kind[position] != PENDING_NONE) {
        return 1;
    }
    if (position < entry->dict_base) {
        return PyLong_CheckExact(PyList_GET_ITEM(entry->list, position));
    }
    PyObject *key = PyLong_FromSsize_t(position - entry->dict_base);
    PyObject *held = key != NULL ? PyDict_GetItemWithError(entry->dict, key) : NULL;
    Py_XDECREF(key);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return held == NULL || PyLong_CheckExact(held);
}

/* aegis_can_count, and the pending delta plus `delta` within 64 bits. */
static inline int
aegis_can_add(PendingList *entry, Py_ssize_t position, long long delta)
{
    long long sum;
    if (entry->kind[position] == PENDING_INT) {
        return !aegis_add_overflows(entry->ints[position], delta, &sum);
    }
    return aegis_can_count(entry, position);
}

static inline int
aegis_can_sum(PendingList *entry, Py_ssize_t position, int from_int)
{
    if (entry->kind[position] != PENDING_NONE) {
        return 1;
    }
    PyObject *held = PyList_GET_ITEM(entry->list, position);
    if (PyFloat_CheckExact(held)) {
        return 1;
    }
    if (!from_int || !PyLong_CheckExact(held)) {
        return 0;
    }
    double value = PyLong_AsDouble(held);  /* as int + float converts it */
    if (value == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static inline void
aegis_touch(PendingList *entry, Py_ssize_t position, unsigned char kind)
{
    entry->kind[position] = kind;
    entry->touched[entry->touched_count++] = position;
}

static inline void
aegis_add_count(PendingList *entry, Py_ssize_t position, long long delta)
{
    if (entry->kind[position] == PENDING_NONE) {
        aegis_touch(entry, position, PENDING_INT);
        entry->ints[position] = 0;
    }
    entry->ints[position] += delta;
}

/* The float a list position holds now, pending or in the list (a float, or
 * an int aegis_can_sum passed). */
static inline double
aegis_current(PendingList *entry, Py_ssize_t position)
{
    if (entry->kind[position] == PENDING_FLOAT) {
        return entry->floats[position];
    }
    PyObject *held = PyList_GET_ITEM(entry->list, position);
    return PyFloat_CheckExact(held) ? PyFloat_AS_DOUBLE(held) : PyLong_AsDouble(held);
}

static inline void
aegis_add_sum(PendingList *entry, Py_ssize_t position, double addend)
{
    double value = aegis_current(entry, position) + addend;
    if (entry->kind[position] == PENDING_NONE) {
        aegis_touch(entry, position, PENDING_FLOAT);
    }
    entry->floats[position] = value;
}

static inline void
aegis_set_float(PendingList *entry, Py_ssize_t position, double value)
{
    if (entry->kind[position] == PENDING_NONE) {
        aegis_touch(entry, position, PENDING_FLOAT);
    }
    entry->floats[position] = value;
}

#endif
