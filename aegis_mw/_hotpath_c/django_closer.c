/* DjangoCloser: what a Django response's close() calls to end its request,
 * put among the response's resource closers by the DjangoPath that served it
 * (django_path.c). Called once: the clock stops, the route is read from the
 * resolver match, the item is queued, as the Python AegisMiddleware._closed
 * does. */
#include "hotpath.h"

static PyObject *closer_call(PyObject *op, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames);

DjangoCloserObject *
aegis_django_closer_new(DjangoPathObject *path, ItemObject *item, PyObject *request)
{
    DjangoCloserObject *closer = PyObject_GC_New(DjangoCloserObject, &AegisDjangoCloserType);
    if (closer == NULL) {
        return NULL;
    }
    closer->vectorcall = closer_call;
    closer->path = (DjangoPathObject *)Py_NewRef(path);
    closer->item = (ItemObject *)Py_NewRef(item);
    closer->request = Py_NewRef(request);
    PyObject_GC_Track(closer);
    return closer;
}

/* The route template of the resolver match's pattern: the owner's cache, or
 * its _template() for a pattern not seen yet. New reference. */
static PyObject *
route_of(DjangoPathObject *path, PyObject *request)
{
    PyObject *match = PyObject_GetAttr(request, aegis_str.resolver_match);
    if (match == NULL) {
        return NULL;
    }
    if (match == Py_None) {
        Py_DECREF(match);
        return Py_NewRef(path->unmatched);
    }
    PyObject *pattern = PyObject_GetAttr(match, aegis_str.route);
    Py_DECREF(match);
    if (pattern == NULL) {
        return NULL;
    }
    PyObject *template = PyUnicode_CheckExact(pattern)
        ? Py_XNewRef(PyDict_GetItemWithError(path->templates, pattern)) : NULL;
    if (template == NULL && !PyErr_Occurred()) {
        template = PyObject_CallMethodOneArg(path->rec.owner, aegis_str.template, pattern);
    }
    Py_DECREF(pattern);
    return template;
}

/* The end of a request: 0, or -1 with our failure set. */
static int
close_request(DjangoPathObject *path, ItemObject *item, PyObject *request)
{
    if (aegis_now(&path->rec, &item->end) < 0) {
        return -1;
    }
    item->has_end = 1;
    int head = aegis_is_head(item->method);
    if (head < 0) {
        return -1;
    }
    if (head) {
        aegis_item_zero_bytes(item, I_RESPONSE_BYTES);
    }
    PyObject *route = route_of(path, request);
    if (route == NULL) {
        return -1;
    }
    aegis_item_set(item, I_ROUTE, route);
    Py_DECREF(route);
    if (path->check_forwarded) {  /* no client address: a Unix socket, maybe trusted */
        PyObject *meta = PyObject_GetAttr(request, aegis_str.meta);
        PyObject *forwarded = meta != NULL ? PyObject_CallMethodObjArgs(
            path->rec.owner, aegis_str.forwarded_for, meta, item->client, NULL) : NULL;
        Py_XDECREF(meta);
        if (forwarded == NULL) {
            return -1;
        }
        aegis_item_set(item, I_FORWARDED, forwarded);
        Py_DECREF(forwarded);
    }
    return aegis_queue_item(&path->rec, item);
}

/* DjangoCloser(): called by HttpResponseBase.close(), once. */
static PyObject *
closer_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    DjangoCloserObject *self = (DjangoCloserObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 0 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "the closer takes no arguments");
        return NULL;
    }
    ItemObject *item = self->item;
    PyObject *request = self->request;
    if (item == NULL || request == NULL || self->path == NULL) {
        Py_RETURN_NONE;  /* called already: never count a request twice */
    }
    self->item = NULL;
    self->request = NULL;
    DjangoPathObject *path = self->path;
    path->rec.in_flight -= 1;
    int status = close_request(path, item, request);
    Py_DECREF(item);
    Py_DECREF(request);
    if (status < 0 && aegis_own_failure(&path->rec) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
closer_traverse(DjangoCloserObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->path);
    Py_VISIT(self->item);
    Py_VISIT(self->request);
    return 0;
}

static int
closer_clear(DjangoCloserObject *self)
{
    Py_CLEAR(self->path);
    Py_CLEAR(self->item);
    Py_CLEAR(self->request);
    return 0;
}

static void
closer_dealloc(DjangoCloserObject *self)
{
    PyObject_GC_UnTrack(self);
    closer_clear(self);
    PyObject_GC_Del(self);
}

PyTypeObject AegisDjangoCloserType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.DjangoCloser",
    .tp_doc = "Called by a Django response's close(): the request ends and is queued.",
    .tp_basicsize = sizeof(DjangoCloserObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(DjangoCloserObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)closer_dealloc,
    .tp_traverse = (traverseproc)closer_traverse,
    .tp_clear = (inquiry)closer_clear,
};
