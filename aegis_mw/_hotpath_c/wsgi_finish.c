/* The end of a WSGI request that ended well (wsgi_response.c's close()): the
 * route read as the Python path's _queue reads it, the item queued. */
#include "hotpath.h"

/* The route template: environ["aegis.route"], else the route object an
 * integration left at route_key, by identity (ObjectRouteReader's cache),
 * else the reader; a falsy answer is "<unmatched>". New reference. */
static PyObject *
route_of(WsgiPathObject *path, PyObject *environ)
{
    PyObject *route = Py_XNewRef(PyDict_GetItemWithError(environ, aegis_str.aegis_route));
    if (route == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if ((route == NULL || route == Py_None) && path->route_key != NULL) {
        Py_CLEAR(route);
        PyObject *object = PyDict_GetItemWithError(environ, path->route_key);
        if (object != NULL && object != Py_None) {
            PyObject *key = PyLong_FromVoidPtr(object);
            route = key != NULL ? Py_XNewRef(PyDict_GetItemWithError(path->templates, key)) : NULL;
            Py_XDECREF(key);
        }
        if (route == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    if ((route == NULL || route == Py_None) && path->read_route != Py_None) {
        Py_XSETREF(route, PyObject_CallOneArg(path->read_route, environ));
        if (route == NULL) {
            return NULL;
        }
    }
    int named = route != NULL && route != Py_None ? PyObject_IsTrue(route) : 0;
    if (named < 0) {
        Py_DECREF(route);
        return NULL;
    }
    if (!named) {
        Py_XSETREF(route, Py_NewRef(path->unmatched));
    }
    return route;
}

/* The error an integration noted at environ["aegis.error"] (a framework that
 * answered an exception itself), as the Python path's _queue takes it: a
 * non-empty str, into an item without an error. 0, or -1 with an error set. */
static int
take_noted_error(ItemObject *item, PyObject *environ)
{
    PyObject *noted = PyDict_GetItemWithError(environ, aegis_str.aegis_error);
    if (noted == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyUnicode_Check(noted) || PyUnicode_GET_LENGTH(noted) == 0) {
        return 0;
    }
    /* Held while the item's own error is asked its truth: an error object's
     * __bool__ could take it out of the environ. */
    noted = Py_NewRef(noted);
    int has_error = aegis_truthy(item->error);
    if (has_error == 0) {
        aegis_item_set(item, I_ERROR, noted);
    }
    Py_DECREF(noted);
    return has_error < 0 ? -1 : 0;
}

/* A request that ended well (its response closed, the clock stopped): a HEAD
 * response's bytes are 0, the route, an error an integration noted and the
 * client behind a trusted proxy read, the item queued. 0, or -1 with our
 * failure set. */
int
aegis_wsgi_queue_closed(WsgiPathObject *path, ItemObject *item, PyObject *environ)
{
    int head = aegis_is_head(item->method);
    if (head < 0) {
        return -1;
    }
    if (head) {
        aegis_item_zero_bytes(item, I_RESPONSE_BYTES);
    }
    PyObject *route = route_of(path, environ);
    if (route == NULL) {
        return -1;
    }
    aegis_item_set(item, I_ROUTE, route);
    Py_DECREF(route);
    if (take_noted_error(item, environ) < 0) {
        return -1;
    }
    if (path->check_forwarded) {  /* no client address: a Unix socket, maybe trusted */
        PyObject *forwarded = PyObject_CallMethodObjArgs(
            path->rec.owner, aegis_str.forwarded_for, environ, item->client, NULL);
        if (forwarded == NULL) {
            return -1;
        }
        aegis_item_set(item, I_FORWARDED, forwarded);
        Py_DECREF(forwarded);
    }
    return aegis_queue_item(&path->rec, item);
}
