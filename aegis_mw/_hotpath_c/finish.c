/* The end of a request: the item finished, its route read, and the item queued
 * in the inbox (recording.c); or the app's exception handed to the
 * middleware's Python code and left set, unchanged. */
#include "hotpath.h"

/* scope.get(key) as a new reference, None when absent. */
static PyObject *
scope_get(PyObject *scope, PyObject *key)
{
    if (PyDict_CheckExact(scope)) {
        PyObject *value = PyDict_GetItemWithError(scope, key);
        if (value == NULL) {
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        }
        return Py_NewRef(value);
    }
    return PyObject_CallMethodOneArg(scope, aegis_str.get, key);
}

/* The route template: the cache first, the reader on a miss. New reference. */
static PyObject *
route_of(HttpPathObject *path, PyObject *scope)
{
    PyObject *route = scope_get(scope, aegis_str.route);
    if (route == NULL) {
        return NULL;
    }
    PyObject *key = PyLong_FromVoidPtr(route);
    Py_DECREF(route);
    if (key == NULL) {
        return NULL;
    }
    PyObject *template = PyDict_GetItemWithError(path->templates, key);
    Py_DECREF(key);
    if (template != NULL) {
        return Py_NewRef(template);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyObject_CallOneArg(path->read_route, scope);
}

/* The steps after a normal end; -1 with our failure set. */
static int
finish_item(HttpPathObject *path, ItemObject *item, PyObject *scope)
{
    if (!item->has_end) {  /* no response, or one cut short */
        PyObject *result = PyObject_CallMethodOneArg(
            path->rec.owner, aegis_str.settle_unfinished, (PyObject *)item);
        if (result == NULL) {
            return -1;
        }
        Py_DECREF(result);
    }
    PyObject *route = route_of(path, scope);
    if (route == NULL) {
        return -1;
    }
    aegis_item_set(item, I_ROUTE, route);
    Py_DECREF(route);
    if (path->check_forwarded) {
        PyObject *forwarded = PyObject_CallMethodOneArg(path->rec.owner, aegis_str.forwarded, scope);
        if (forwarded == NULL) {
            return -1;
        }
        aegis_item_set(item, I_FORWARDED, forwarded);
        Py_DECREF(forwarded);
    }
    return aegis_queue_item(&path->rec, item);
}

/* The app's coroutine returned: finish the item and queue it. Returns 0, or -1
 * with an exception that must propagate (never an Exception of ours). */
int
aegis_finish_returned(ExchangeObject *self)
{
    HttpPathObject *path = self->path;
    PyObject *scope = self->scope;
    if (scope == NULL) {  /* finished already: never count a request twice */
        return 0;
    }
    self->scope = NULL;
    path->rec.in_flight -= 1;
    int status = finish_item(path, self->item, scope);
    Py_DECREF(scope);
    return status < 0 ? aegis_own_failure(&path->rec) : 0;
}

/* The app raised (the exception is set): record it, and leave it set, unchanged.
 * Only something that is not an Exception, raised by the recording itself, would
 * replace it (chained to it), as on the Python path. */
void
aegis_finish_raised(ExchangeObject *self)
{
    HttpPathObject *path = self->path;
    PyObject *scope = self->scope;
    if (scope == NULL) {  /* finished already: never count a request twice */
        return;
    }
    self->scope = NULL;
    path->rec.in_flight -= 1;
    PyObject *exc = take_exception();
    PyObject *result = PyObject_CallMethodObjArgs(
        path->rec.owner, aegis_str.queue_failed, scope, (PyObject *)self->item, exc, NULL);
    Py_DECREF(scope);
    if (result != NULL) {
        Py_DECREF(result);
        aegis_untrack_if_atomic(self->item);  /* queued (or refused) by the Python code */
        restore_exception(exc);
        return;
    }
    if (PyErr_ExceptionMatches(PyExc_Exception)) {  /* _queue_failed catches those itself */
        PyErr_WriteUnraisable(path->rec.owner);
        restore_exception(exc);
        return;
    }
    PyObject *replacement = take_exception();
    PyException_SetContext(replacement, exc);
    restore_exception(replacement);
}
