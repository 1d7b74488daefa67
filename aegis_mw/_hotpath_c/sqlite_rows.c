/*
 * The SQLite sink's row inserts, compiled (aegis_mw/sinks/sqlite_rows.py).
 *
 * Binding parameters through the sqlite3 module costs more than SQLite's own
 * work on the rows: each text value is copied into a fresh allocation, and a
 * record of 12 fields is bound field by field under the GIL (see
 * bench/pipeline.py). Here the records' values are checked under the GIL, then
 * bound and stepped with it released, text bound in place (SQLITE_STATIC: the
 * records are held until their statement is done with them).
 *
 * It drives the connection the sqlite3 module opened, through SQLite's stable
 * C API, which it finds in the library the sqlite3 module itself uses (no
 * header or library needed at build time). The handle is read the way
 * extensions of the sqlite3 module have long read it: the first member after
 * the object header of every CPython's pysqlite_Connection; the Python side
 * checks it against the connection's own idea of its file before trusting it.
 *
 * Only the common case is taken: exact str, int (64-bit), float and None
 * values. At the first record holding anything else it stops and says how far
 * it got; the Python code binds the rest exactly as before, so a value the
 * sqlite3 module refuses is refused with the same error.
 */
#include "hotpath.h"

#ifndef _WIN32
#include <dlfcn.h>
#include <unistd.h>
#endif
#include <stdint.h>
#include <string.h>

/* SQLite's stable C API, declared here (no sqlite3.h at build time). */
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
typedef struct sqlite3_mutex sqlite3_mutex;
#define SQLITE_OK 0
#define SQLITE_DONE 101
#define SQLITE_STATIC ((void (*)(void *))0)

static struct {
    int ready;
    int (*prepare_v2)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
    int (*bind_text)(sqlite3_stmt *, int, const char *, int, void (*)(void *));
    int (*bind_int64)(sqlite3_stmt *, int, long long);
    int (*bind_double)(sqlite3_stmt *, int, double);
    int (*bind_null)(sqlite3_stmt *, int);
    int (*bind_parameter_count)(sqlite3_stmt *);
    int (*step)(sqlite3_stmt *);
    int (*reset)(sqlite3_stmt *);
    int (*finalize)(sqlite3_stmt *);
    int (*clear_bindings)(sqlite3_stmt *);
    int (*extended_errcode)(sqlite3 *);
    const char *(*errmsg)(sqlite3 *);
    const char *(*db_filename)(sqlite3 *, const char *);
    sqlite3_mutex *(*db_mutex)(sqlite3 *);
    void (*mutex_enter)(sqlite3_mutex *);
    void (*mutex_leave)(sqlite3_mutex *);
} api;

static PyTypeObject *connection_type;

/* What every CPython's sqlite3.Connection starts with. */
typedef struct {
    PyObject_HEAD
    sqlite3 *db;
} ConnectionPrefix;

/* sqlite_rows_init(module_file, connection_type) -> bool: find SQLite's
 * functions in the library the sqlite3 module loaded (`module_file` is
 * _sqlite3's __file__, loaded already). False where they cannot be found. */
PyObject *
aegis_sqlite_rows_init(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "sqlite_rows_init(module_file, connection_type)");
        return NULL;
    }
#ifdef _WIN32
    Py_RETURN_FALSE;
#else
    if (api.ready) {
        Py_RETURN_TRUE;
    }
    const char *file = PyUnicode_AsUTF8(args[0]);
    if (file == NULL) {
        return NULL;
    }
    /* RTLD_NOLOAD: only the copy already loaded, never a second one. dlsym on
     * its handle searches it and the libraries it was linked with. */
    void *handle = dlopen(file, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == NULL) {
        Py_RETURN_FALSE;
    }
    struct {
        void **slot;
        const char *name;
    } symbols[] = {
        {(void **)&api.prepare_v2, "sqlite3_prepare_v2"},
        {(void **)&api.bind_text, "sqlite3_bind_text"},
        {(void **)&api.bind_int64, "sqlite3_bind_int64"},
        {(void **)&api.bind_double, "sqlite3_bind_double"},
        {(void **)&api.bind_null, "sqlite3_bind_null"},
        {(void **)&api.bind_parameter_count, "sqlite3_bind_parameter_count"},
        {(void **)&api.step, "sqlite3_step"},
        {(void **)&api.reset, "sqlite3_reset"},
        {(void **)&api.finalize, "sqlite3_finalize"},
        {(void **)&api.clear_bindings, "sqlite3_clear_bindings"},
        {(void **)&api.extended_errcode, "sqlite3_extended_errcode"},
        {(void **)&api.errmsg, "sqlite3_errmsg"},
        {(void **)&api.db_filename, "sqlite3_db_filename"},
        {(void **)&api.db_mutex, "sqlite3_db_mutex"},
        {(void **)&api.mutex_enter, "sqlite3_mutex_enter"},
        {(void **)&api.mutex_leave, "sqlite3_mutex_leave"},
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        *symbols[i].slot = dlsym(handle, symbols[i].name);
        if (*symbols[i].slot == NULL) {
            /* The handle stays open: the module holds the library anyway. */
            Py_RETURN_FALSE;
        }
    }
    Py_XSETREF(connection_type, (PyTypeObject *)Py_NewRef(args[1]));
    api.ready = 1;
    Py_RETURN_TRUE;
#endif
}

/* The open handle of `connection`, or NULL (with an error set where it is not
 * a connection; without one where it is closed). */
static sqlite3 *
handle_of(PyObject *connection)
{
    if (!api.ready || connection_type == NULL
        || !PyObject_TypeCheck(connection, connection_type)) {
        PyErr_SetString(PyExc_TypeError, "not an sqlite3.Connection (or not initialised)");
        return NULL;
    }
    return ((ConnectionPrefix *)connection)->db;
}

/* sqlite_filename(connection) -> str | None: the file of its "main" database,
 * as SQLite reports it through the handle read here (the Python side compares
 * it with PRAGMA database_list before trusting the handle). */
PyObject *
aegis_sqlite_filename(PyObject *module, PyObject *connection)
{
    sqlite3 *db = handle_of(connection);
    if (db == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    const char *name = api.db_filename(db, "main");
    if (name == NULL) {
        Py_RETURN_NONE;
    }
    return PyUnicode_DecodeFSDefault(name);
}

/* One value, read under the GIL and bound without it. CELL_UNSET: nothing
 * known to be bound (a statement's parameters before their first bind). */
enum { CELL_NULL, CELL_INT, CELL_FLOAT, CELL_TEXT, CELL_UNSET };
typedef struct {
    int kind;
    int length;
    union {
        long long integer;
        double real;
        const char *text;
    } v;
} Cell;

/* Read a record's `width` values into `cells`; 0 when one is not of the
 * common kinds (no error left set). */
static int
read_record(PyObject *record, Py_ssize_t width, Cell *cells)
{
    if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) != width) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < width; i++) {
        PyObject *value = PyTuple_GET_ITEM(record, i);
        Cell *cell = &cells[i];
        if (value == Py_None) {
            cell->kind = CELL_NULL;
        }
        else if (PyUnicode_CheckExact(value)) {
            Py_ssize_t length;
            const char *text = PyUnicode_AsUTF8AndSize(value, &length);
            if (text == NULL || length > INT32_MAX) {
                PyErr_Clear();
                return 0;
            }
            cell->kind = CELL_TEXT;
            cell->v.text = text;
            cell->length = (int)length;
        }
        else if (PyLong_CheckExact(value)) {
            int overflow;
            long long integer = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (overflow || (integer == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                return 0;
            }
            cell->kind = CELL_INT;
            cell->v.integer = integer;
        }
        else if (PyFloat_CheckExact(value)) {
            cell->kind = CELL_FLOAT;
            cell->v.real = PyFloat_AS_DOUBLE(value);
        }
        else {
            return 0;
        }
    }
    return 1;
}

/* Whether binding `cell` where `bound` is bound would change nothing: the
 * same kind and value (a float's bits; a text's very bytes, at the same
 * address, which the records held for the chunk keep alive). */
static int
same_cell(const Cell *cell, const Cell *bound)
{
    if (cell->kind != bound->kind) {
        return 0;
    }
    switch (cell->kind) {
    case CELL_INT:
        return cell->v.integer == bound->v.integer;
    case CELL_FLOAT:
        return memcmp(&cell->v.real, &bound->v.real, sizeof(double)) == 0;
    case CELL_TEXT:
        return cell->v.text == bound->v.text && cell->length == bound->length;
    case CELL_NULL:
        return 1;
    default:
        return 0;
    }
}

/* Bind `cells` to the statement's first `count` parameters, skipping those
 * whose value is bound already: `bound` holds what each parameter holds
 * (SQLite keeps bindings across steps and resets), and is kept up to date.
 * Most columns repeat from one statement's row to the same row of the next
 * (method, route, status, client, error, sizes), and each bind costs a
 * mutex and the release of the old value. */
static int
bind_cells(sqlite3_stmt *statement, const Cell *cells, Cell *bound, int count)
{
    for (int i = 0; i < count; i++) {
        const Cell *cell = &cells[i];
        if (same_cell(cell, &bound[i])) {
            continue;
        }
        bound[i].kind = CELL_UNSET;  /* until the bind below succeeded */
        int rc;
        switch (cell->kind) {
        case CELL_INT:
            rc = api.bind_int64(statement, i + 1, cell->v.integer);
            break;
        case CELL_FLOAT:
            rc = api.bind_double(statement, i + 1, cell->v.real);
            break;
        case CELL_TEXT:
            rc = api.bind_text(statement, i + 1, cell->v.text, cell->length, SQLITE_STATIC);
            break;
        default:
            rc = api.bind_null(statement, i + 1);
        }
        if (rc != SQLITE_OK) {
            return rc;
        }
        bound[i] = *cell;
    }
    return SQLITE_OK;
}

/* No parameter of `count` known to be bound: after clear_bindings, and for a
 * statement just prepared. */
static void
forget_bound(Cell *bound, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        bound[i].kind = CELL_UNSET;
    }
}

/* Bind `cells` (rows of `width`) and step `statement` once; SQLITE_OK or the
 * error. The statement is reset either way, so its next step starts clean. */
static int
run_statement(sqlite3_stmt *statement, const Cell *cells, Cell *bound, int count)
{
    int rc = bind_cells(statement, cells, bound, count);
    if (rc == SQLITE_OK) {
        rc = api.step(statement);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    int reset = api.reset(statement);
    /* A failed step's error is reported by the reset too; keep the first. */
    return rc != SQLITE_OK ? rc : reset;
}

/* SQLite's error for a failed call: its extended code (as the sqlite3 module
 * reports it, 3.11+) and a copy of its message, or NULL text where the copy
 * could not be made. */
typedef struct {
    int code;
    char *text;
} Failure;

/* Copy the connection's error for `rc`; without the GIL, with the
 * connection's mutex held since the failing call, so no other thread's call
 * on the connection replaced (or freed) it first. */
static void
note_failure(sqlite3 *db, int rc, Failure *failure)
{
    int code = api.extended_errcode(db);
    failure->code = code != SQLITE_OK ? code : rc;
    const char *text = api.errmsg(db);
    size_t length = strlen(text);
    failure->text = PyMem_RawMalloc(length + 1);
    if (failure->text != NULL) {
        memcpy(failure->text, text, length + 1);
    }
}

/* run_statement with the connection's mutex held (it is recursive: SQLite's
 * calls inside take it again) until its error, if any, is copied. */
static int
run_locked(sqlite3 *db, sqlite3_stmt *statement, const Cell *cells, Cell *bound, int count,
           Failure *failure)
{
    sqlite3_mutex *mutex = api.db_mutex(db);
    api.mutex_enter(mutex);
    int rc = run_statement(statement, cells, bound, count);
    if (rc != SQLITE_OK) {
        note_failure(db, rc, failure);
    }
    api.mutex_leave(mutex);
    return rc;
}

/* Records read per pause: the GIL is held while they are read (well under a
 * millisecond for this many) and released while SQLite takes them. */
#define CHUNK_RECORDS 1024

static double
seconds_now(void)
{
#ifdef _WIN32
    return 0.0;
#else
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
#endif
}

/* Work in slices, as the flusher's Python work does (core/gil_slices.py):
 * with the GIL released SQLite's work no longer delays the app's threads
 * through the GIL, but it still takes the CPU, and an event loop sharing a
 * core with this thread waits for the kernel to switch back to it. A short
 * sleep after each `slice` seconds of work hands the core over. */
typedef struct {
    double slice;
    double pause;
    double since;
} Slicer;

static void
slicer_check(Slicer *slicer)
{
#ifndef _WIN32
    if (slicer->pause <= 0.0) {
        return;
    }
    double now = seconds_now();
    if (now - slicer->since < slicer->slice) {
        return;
    }
    struct timespec pause;
    pause.tv_sec = (time_t)slicer->pause;
    pause.tv_nsec = (long)((slicer->pause - (double)pause.tv_sec) * 1e9);
    nanosleep(&pause, NULL);
    slicer->since = seconds_now();
#endif
}

/* The two statements of a connection's inserts, kept from one call to the
 * next (sqlite_rows_cache): preparing a statement of 64 rows costs SQLite
 * about 170 µs, as much as binding and stepping a few hundred rows, and a
 * flush of a quiet second prepared it once per write. Held in a capsule the
 * sink keeps with its connection; the statements are finalized when the
 * capsule goes (or when the next call brings another connection or other
 * statements), in the process that prepared them only: a forked child's
 * copy of its parent's connection may have had its mutex held at the fork,
 * and is left alone, as the sink leaves that connection alone. Finalizing
 * after the sqlite3 module closed the connection is allowed: it closes with
 * sqlite3_close_v2, which waits for the last statement. `busy` while a call
 * uses them (a call from another thread meanwhile prepares its own). */
typedef struct {
    PyObject *connection;
    sqlite3 *db;
    sqlite3_stmt *many;
    sqlite3_stmt *one;
    PyObject *many_sql;
    PyObject *one_sql;
    Py_ssize_t per;
    Py_ssize_t width;
    long pid;
    int busy;
} RowsCache;

static const char CACHE_NAME[] = "aegis_mw._hotpath.sqlite_rows_cache";

static long
current_pid(void)
{
#ifdef _WIN32
    return 0;
#else
    return (long)getpid();
#endif
}

/* Finalize either statement (NULL: none); called without the GIL. */
static void
finalize_pair(sqlite3_stmt *many, sqlite3_stmt *one)
{
    if (many != NULL) {
        api.finalize(many);
    }
    if (one != NULL) {
        api.finalize(one);
    }
}

/* Finalize the cache's statements (without the GIL) and empty it; the caller
 * holds it alone (busy, or its capsule going). */
static void
cache_forget(RowsCache *cache)
{
    if (cache->many != NULL) {
        if (cache->pid == current_pid()) {
            sqlite3_stmt *many = cache->many, *one = cache->one;
            Py_BEGIN_ALLOW_THREADS
            finalize_pair(many, one);
            Py_END_ALLOW_THREADS
            Py_CLEAR(cache->connection);
        }
        else {
            cache->connection = NULL; /* the parent's: never released here */
        }
    }
    cache->many = cache->one = NULL;
    cache->db = NULL;
    Py_CLEAR(cache->many_sql);
    Py_CLEAR(cache->one_sql);
}

static void
cache_destroy(PyObject *capsule)
{
    RowsCache *cache = PyCapsule_GetPointer(capsule, CACHE_NAME);
    if (cache == NULL) {
        PyErr_Clear();
        return;
    }
    cache_forget(cache);
    PyMem_Free(cache);
}

/* sqlite_rows_cache() -> capsule: an empty cache for sqlite_insert_rows. */
PyObject *
aegis_sqlite_rows_cache(PyObject *module, PyObject *unused)
{
    RowsCache *cache = PyMem_Calloc(1, sizeof(RowsCache));
    if (cache == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(cache, CACHE_NAME, cache_destroy);
    if (capsule == NULL) {
        PyMem_Free(cache);
    }
    return capsule;
}

static int
same_text(PyObject *kept, PyObject *given)
{
    return kept == given || PyUnicode_Compare(kept, given) == 0;
}

/* Whether `cache` holds the statements of this call. */
static int
cache_fits(const RowsCache *cache, PyObject *connection, sqlite3 *db, PyObject *many_sql,
           PyObject *one_sql, Py_ssize_t per, Py_ssize_t width)
{
    return cache->many != NULL && cache->connection == connection && cache->db == db
           && cache->per == per && cache->width == width && cache->pid == current_pid()
           && same_text(cache->many_sql, many_sql) && same_text(cache->one_sql, one_sql);
}

/* After a call: statements of its own finalized, the cache's kept (reset by
 * run_statement, their bindings cleared) and the cache free again. */
static void
release_statements(RowsCache *cache, PyObject *const *args, int kept, sqlite3_stmt *many,
                   sqlite3_stmt *one)
{
    if (!kept && (many != NULL || one != NULL)) {
        Py_BEGIN_ALLOW_THREADS
        finalize_pair(many, one);
        Py_END_ALLOW_THREADS
    }
    if (cache != NULL) {
        cache->busy = 0;
        Py_DECREF(args[9]);
    }
}

/* sqlite_insert_rows(connection, many_sql, one_sql, rows_per_statement, width,
 *                    records, start, slice_seconds, pause_seconds[, cache])
 *     -> (done, error_code, error_message)
 *
 * Inserts records[start:] with `many_sql` (rows_per_statement rows of `width`
 * parameters) while whole groups remain, and `one_sql` for the rest. Returns
 * how many records it stored (from `start`), and SQLite's error code and
 * message when a statement failed (0 and None otherwise): then the
 * transaction holds the rows of the statements before that one, and the
 * caller rolls it back. `done` short of the end with no error: a record after
 * `start + done` holds a value of another kind; the caller binds from there
 * (a whole number of statements on, so its statements hold the same rows).
 * After each `slice_seconds` of statements it sleeps `pause_seconds` (none
 * when 0, and none on Windows, whose sleeps last a timer tick). With a
 * `cache` (sqlite_rows_cache), the statements are prepared once and kept in
 * it for the next call on the same connection. */
PyObject *
aegis_sqlite_insert_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 9 && nargs != 10) || !PyUnicode_Check(args[1]) || !PyUnicode_Check(args[2])
        || !PyLong_Check(args[3]) || !PyLong_Check(args[4]) || !PyList_Check(args[5])
        || !PyLong_Check(args[6]) || !PyFloat_Check(args[7]) || !PyFloat_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError,
                        "sqlite_insert_rows(connection, many_sql, one_sql, "
                        "rows_per_statement, width, records: list, start, "
                        "slice_seconds: float, pause_seconds: float[, cache])");
        return NULL;
    }
    RowsCache *cache = NULL;
    if (nargs == 10 && args[9] != Py_None) {
        cache = PyCapsule_GetPointer(args[9], CACHE_NAME);
        if (cache == NULL) {
            return NULL;
        }
    }
    Slicer slicer = {PyFloat_AS_DOUBLE(args[7]), PyFloat_AS_DOUBLE(args[8]), seconds_now()};
    if (!(slicer.slice >= 0.0 && slicer.pause >= 0.0 && slicer.pause < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "sqlite_insert_rows: bad slice or pause");
        return NULL;
    }
    PyObject *connection = args[0];
    sqlite3 *db = handle_of(connection);
    if (db == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "the connection is closed");
        }
        return NULL;
    }
    const char *many_sql = PyUnicode_AsUTF8(args[1]);
    const char *one_sql = PyUnicode_AsUTF8(args[2]);
    Py_ssize_t per = PyLong_AsSsize_t(args[3]);
    Py_ssize_t width = PyLong_AsSsize_t(args[4]);
    Py_ssize_t start = PyLong_AsSsize_t(args[6]);
    if (many_sql == NULL || one_sql == NULL || PyErr_Occurred()) {
        return NULL;
    }
    if (per < 1 || per > CHUNK_RECORDS || width < 1 || width > 32766
        || per * width > 32766 || start < 0 || CHUNK_RECORDS % per != 0) {
        PyErr_SetString(PyExc_ValueError, "sqlite_insert_rows: bad shape");
        return NULL;
    }
    /* Held for the call: nothing the GIL lets run meanwhile can free the list
     * or the connection under us. */
    PyObject *records = Py_NewRef(args[5]);
    Py_INCREF(connection);
    PyObject **held = PyMem_Malloc(sizeof(PyObject *) * CHUNK_RECORDS);
    Cell *cells = PyMem_Malloc(sizeof(Cell) * (size_t)width * CHUNK_RECORDS);
    /* What each parameter of `many`, then of `one`, holds (see bind_cells). */
    Cell *bound = PyMem_Malloc(sizeof(Cell) * (size_t)width * (size_t)(per + 1));
    Cell *bound_one = NULL;
    sqlite3_stmt *many = NULL, *one = NULL;
    int rc = SQLITE_OK;
    Py_ssize_t done = 0;
    Failure failure = {0, NULL};
    /* The statements are the cache's (owned by it, never finalized here). */
    int kept = 0;
    if (cache != NULL && cache->busy) {
        cache = NULL; /* in use by a call under way: this one prepares its own */
    }
    if (cache != NULL) {
        Py_INCREF(args[9]); /* the capsule outlives this call */
        cache->busy = 1;
    }
    if (held == NULL || cells == NULL || bound == NULL) {
        PyErr_NoMemory();
        goto failed;
    }
    bound_one = bound + width * per;
    /* The cache's statements, or new ones, which go into it when they fit. */
    if (cache != NULL) {
        if (cache_fits(cache, connection, db, args[1], args[2], per, width)) {
            many = cache->many;
            one = cache->one;
            kept = 1;
        }
        else {
            cache_forget(cache);
        }
    }
    if (!kept) {
        Py_BEGIN_ALLOW_THREADS
        sqlite3_mutex *mutex = api.db_mutex(db);
        api.mutex_enter(mutex);
        rc = api.prepare_v2(db, many_sql, -1, &many, NULL);
        if (rc == SQLITE_OK) {
            rc = api.prepare_v2(db, one_sql, -1, &one, NULL);
        }
        if (rc != SQLITE_OK) {
            note_failure(db, rc, &failure);
        }
        api.mutex_leave(mutex);
        Py_END_ALLOW_THREADS
        if (rc == SQLITE_OK
            && (many == NULL || one == NULL || api.bind_parameter_count(many) != per * width
                || api.bind_parameter_count(one) != width)) {
            PyErr_SetString(PyExc_ValueError, "sqlite_insert_rows: the statements do not fit");
            goto failed;
        }
        if (rc == SQLITE_OK && cache != NULL) {
            cache->connection = Py_NewRef(connection);
            cache->db = db;
            cache->many = many;
            cache->one = one;
            cache->many_sql = Py_NewRef(args[1]);
            cache->one_sql = Py_NewRef(args[2]);
            cache->per = per;
            cache->width = width;
            cache->pid = current_pid();
            kept = 1;
        }
    }
    int stopped = 0;
    while (rc == SQLITE_OK && !stopped) {
        /* Read a chunk under the GIL; the list may have changed length. */
        Py_ssize_t total = PyList_GET_SIZE(records);
        Py_ssize_t first = start + done;
        Py_ssize_t taken = 0;
        int odd = 0;
        while (taken < CHUNK_RECORDS && first + taken < total) {
            PyObject *record = PyList_GET_ITEM(records, first + taken);
            if (!read_record(record, width, cells + taken * width)) {
                odd = 1;
                break;
            }
            held[taken++] = Py_NewRef(record);
        }
        stopped = odd || first + taken >= total;
        /* Before a record left to the sqlite3 module, only whole statements:
         * it binds from there in statements of the same rows as it would
         * have from the start, so a refusal comes from the same statement,
         * with the same error. At the end, the rest one by one, as it does. */
        Py_ssize_t whole = taken - taken % per;
        Py_ssize_t upto = odd ? whole : taken;
        Py_ssize_t stored = 0;
        /* clear_bindings after the last chunk unbound everything. */
        forget_bound(bound, width * (per + 1));
        Py_BEGIN_ALLOW_THREADS
        while (rc == SQLITE_OK && stored < whole) {
            rc = run_locked(db, many, cells + stored * width, bound, (int)(per * width),
                            &failure);
            stored += rc == SQLITE_OK ? per : 0;
            slicer_check(&slicer);
        }
        while (rc == SQLITE_OK && stored < upto) {
            rc = run_locked(db, one, cells + stored * width, bound_one, (int)width, &failure);
            stored += rc == SQLITE_OK ? 1 : 0;
        }
        /* No binding may outlive the text it points into. Without the GIL,
         * as every call here that takes the connection's mutex: a thread
         * holding that mutex may be waiting for the GIL (a Python function
         * or authorizer SQLite calls back). */
        api.clear_bindings(many);
        api.clear_bindings(one);
        Py_END_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < taken; i++) {
            Py_DECREF(held[i]);
        }
        done += stored;
    }
    PyObject *message = Py_None;
    int code = 0;
    if (rc != SQLITE_OK) {
        if (failure.text == NULL) {
            PyErr_NoMemory();
            goto failed;
        }
        code = failure.code;
        message = PyUnicode_DecodeUTF8(failure.text, (Py_ssize_t)strlen(failure.text), "replace");
        if (message == NULL) {
            goto failed;
        }
    }
    else {
        Py_INCREF(message);
    }
    release_statements(cache, args, kept, many, one);
    PyMem_RawFree(failure.text);
    PyMem_Free(held);
    PyMem_Free(cells);
    PyMem_Free(bound);
    Py_DECREF(records);
    Py_DECREF(connection);
    return Py_BuildValue("(niN)", done, code, message);

failed:
    release_statements(cache, args, kept, many, one);
    PyMem_RawFree(failure.text);
    PyMem_Free(held);
    PyMem_Free(cells);
    PyMem_Free(bound);
    Py_DECREF(records);
    Py_DECREF(connection);
    return NULL;
}
