/* http.c: the status page of `p2v-server run --http ADDR:PORT` — a small read-only
 * HTTP/1.1 server (RFC 9110, RFC 9112) of our own: the page (HTML, CSS and a little
 * JavaScript embedded below), the jobs as JSON (the objects `status --json` gives, built
 * by status.c), and two files of a job's folder: report.json and verify/serial.log.
 *
 * One thread runs a poll loop over the listening socket, a stop pipe and at most
 * HTTP_CONN_MAX non-blocking connections. Every request is bounded: its head must fit in
 * HTTP_HEAD_MAX bytes and arrive within HTTP_HEAD_TIMEOUT_MS of the accept; only GET and
 * HEAD are served; each response ends with `Connection: close`. The request head is
 * parsed from memory (http_parse_head) apart from the socket I/O. Nothing is written to
 * the store's jobs: files are opened read-only under the store's jobs folder with
 * O_NOFOLLOW at every step, after the job id passed srv_job_id_ok.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "p2v-tls.h"
#include "server.h"

#define HTTP_CONN_MAX 16             /* concurrent connections; more get a 503 */
#define HTTP_HEAD_MAX 8192           /* request line and header fields (431 past it) */
#define HTTP_HEAD_TIMEOUT_MS 10000   /* from the accept to the end of the head (408) */
#define HTTP_SEND_TIMEOUT_MS 10000   /* a response that makes no progress this long ends */
#define HTTP_LINGER_MS 2000          /* reading what the client still sends after the response */
#define HTTP_LINGER_MAX (64u << 10)
#define HTTP_FILE_CHUNK (16u << 10)  /* a served file is streamed through this much memory */
#define HTTP_METHOD_MAX 16

/* ---------------------------------------------------------------- the page */

static const char http_page[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\">\n"
    "<head>\n"
    "<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>p2v-server</title>\n"
    "<style>\n"
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}\n"
    "h1{font-size:1.3em;margin:0 0 .3em}\n"
    "#status{color:#666;font-size:.9em;margin:0 0 1em}\n"
    "table{border-collapse:collapse;width:100%}\n"
    "th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #ddd;"
    "white-space:nowrap}\n"
    "th{background:#f3f3f3;font-weight:600}\n"
    "td.pct progress{width:10em;vertical-align:middle;margin-right:.5em}\n"
    "td.stage{white-space:normal}\n"
    "tr.active td.stage{font-weight:600}\n"
    "tr.failed td.stage{color:#b00}\n"
    "td.verdict.success{color:#070;font-weight:600}\n"
    "span.id{color:#777;font-size:.85em}\n"
    "</style>\n"
    "</head>\n"
    "<body>\n"
    "<h1>p2v-server: jobs</h1>\n"
    "<p id=\"status\">loading&hellip;</p>\n"
    "<table>\n"
    "<thead><tr><th>machine</th><th>stage</th><th>progress</th><th>rate</th><th>ETA</th>"
    "<th>verdict</th><th>files</th></tr></thead>\n"
    "<tbody id=\"rows\"></tbody>\n"
    "</table>\n"
    "<noscript><p>This page needs JavaScript; the jobs are at "
    "<a href=\"/api/jobs\">/api/jobs</a>.</p></noscript>\n"
    "<script>\n"
    "\"use strict\";\n"
    "function size(n) {\n"
    "  const u = [\"B\", \"KiB\", \"MiB\", \"GiB\", \"TiB\"];\n"
    "  let i = 0;\n"
    "  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }\n"
    "  return (i ? n.toFixed(1) : String(n)) + \" \" + u[i];\n"
    "}\n"
    "function eta(s) {\n"
    "  if (typeof s !== \"number\") return \"-\";\n"
    "  const m = Math.floor(s / 60) % 60, x = s % 60;\n"
    "  return Math.floor(s / 3600) + \":\" + String(m).padStart(2, \"0\") + \":\" +\n"
    "    String(x).padStart(2, \"0\");\n"
    "}\n"
    "function cell(tr, cls, text) {\n"
    "  const td = document.createElement(\"td\");\n"
    "  td.className = cls;\n"
    "  if (text !== undefined) td.textContent = text;\n"
    "  tr.appendChild(td);\n"
    "  return td;\n"
    "}\n"
    "function link(td, href, text) {\n"
    "  const a = document.createElement(\"a\");\n"
    "  a.href = href;\n"
    "  a.textContent = text;\n"
    "  if (td.firstChild) td.appendChild(document.createTextNode(\" \"));\n"
    "  td.appendChild(a);\n"
    "}\n"
    "function str(v) { return typeof v === \"string\" && v !== \"\" ? v : null; }\n"
    "function row(j) {\n"
    "  const id = String(j.job), tr = document.createElement(\"tr\");\n"
    "  const total = Number(j[\"bytes-total\"]) || 0, done = Number(j[\"bytes-done\"]) || 0;\n"
    "  const frac = total > 0 ? Math.min(done, total) / total : 0;\n"
    "  const pct = Math.floor(frac * 1000) / 10;\n"
    "  tr.id = \"job-\" + id;\n"
    "  tr.dataset.pct = String(pct);\n"
    "  tr.dataset.state = String(j.state);\n"
    "  if (j.active) tr.classList.add(\"active\");\n"
    "  if (j.state === \"failed\") tr.classList.add(\"failed\");\n"
    "  const name = cell(tr, \"name\", String(j.name));\n"
    "  if (id !== String(j.name)) {\n"
    "    const s = document.createElement(\"span\");\n"
    "    s.className = \"id\";\n"
    "    s.textContent = \" (\" + id + \")\";\n"
    "    name.appendChild(s);\n"
    "  }\n"
    "  cell(tr, \"stage\", j.state === \"failed\" ?\n"
    "    \"failed (\" + (str(j[\"failed-stage\"]) || \"?\") + \": \" +\n"
    "      (str(j.reason) || \"?\") + \")\" :\n"
    "    String(j.state));\n"
    "  const p = cell(tr, \"pct\"), bar = document.createElement(\"progress\");\n"
    "  bar.max = 1;\n"
    "  bar.value = frac;\n"
    "  p.appendChild(bar);\n"
    "  p.appendChild(document.createTextNode(total > 0 ? pct + \" %\" : \"-\"));\n"
    "  cell(tr, \"rate\",\n"
    "    j.active && Number(j.rate) > 0 ? size(Number(j.rate)) + \"/s\" : \"-\");\n"
    "  cell(tr, \"eta\", j.active ? eta(j.eta) : \"-\");\n"
    "  const v = cell(tr, \"verdict\", str(j.verdict) || \"-\");\n"
    "  if (j.verdict === \"success\") v.classList.add(\"success\");\n"
    "  const f = cell(tr, \"files\");\n"
    "  const base = \"/jobs/\" + encodeURIComponent(id) + \"/\";\n"
    "  if (str(j.report)) link(f, base + \"report.json\", \"report\");\n"
    "  if (str(j[\"serial-log\"])) link(f, base + \"serial.log\", \"serial log\");\n"
    "  if (!f.firstChild) f.textContent = \"-\";\n"
    "  return tr;\n"
    "}\n"
    "function render(doc) {\n"
    "  const jobs = Array.isArray(doc.jobs) ? doc.jobs : [];\n"
    "  const rows = jobs.map(row);\n"
    "  if (rows.length === 0) {\n"
    "    const tr = document.createElement(\"tr\");\n"
    "    cell(tr, \"none\", \"no jobs yet\").colSpan = 7;\n"
    "    rows.push(tr);\n"
    "  }\n"
    "  document.getElementById(\"rows\").replaceChildren(...rows);\n"
    "  document.getElementById(\"status\").textContent = jobs.length + \" job(s); updated \" +\n"
    "    new Date().toLocaleTimeString();\n"
    "}\n"
    "function poll() {\n"
    "  fetch(\"/api/jobs\", {cache: \"no-store\"})\n"
    "    .then(r => { if (!r.ok) throw new Error(\"HTTP \" + r.status); return r.json(); })\n"
    "    .then(render)\n"
    "    .catch(e => {\n"
    "      document.getElementById(\"status\").textContent = \"cannot read /api/jobs: \" +\n"
    "        e.message;\n"
    "    })\n"
    "    .finally(() => setTimeout(poll, 1000));\n"
    "}\n"
    "poll();\n"
    "</script>\n"
    "</body>\n"
    "</html>\n";

/* ---------------------------------------------------------------- request parsing */

enum http_route {
    ROUTE_PAGE,       /* / */
    ROUTE_JOBS,       /* /api/jobs */
    ROUTE_JOB,        /* /api/jobs/ID */
    ROUTE_REPORT,     /* /jobs/ID/report.json */
    ROUTE_SERIAL,     /* /jobs/ID/serial.log */
    ROUTE_NONE,
};

struct http_req {
    bool head;                          /* HEAD: the headers of the GET response only */
    enum http_route route;
    char id[P2V_PROTO_JOB_MAX + 1];     /* ROUTE_JOB, _REPORT, _SERIAL: a valid job id */
    char method[HTTP_METHOD_MAX + 1];   /* for the log */
    char path[128];                     /* for the log (cut) */
};

/* RFC 9110 §5.6.2 tchar */
static bool is_tchar(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The next line of @r (ended by LF, a CR before it dropped): borrowed into @line, @n.
 * -1 when no LF is left, or a CR stands anywhere but before the LF. */
static int rd_line(struct p2v_rd *r, const uint8_t **line, size_t *n)
{
    const uint8_t *p, *lf;
    size_t left = p2v_rd_left(r);
    if (p2v_rd_ptr_at(r, p2v_rd_pos(r), &p, left) < 0 || !(lf = memchr(p, '\n', left)))
        return -1;
    size_t len = (size_t)(lf - p);
    if (p2v_rd_skip(r, len + 1) < 0)
        return -1;
    if (len > 0 && p[len - 1] == '\r')
        len--;
    if (memchr(p, '\r', len))
        return -1;
    *line = p;
    *n = len;
    return 0;
}

/* Which resource @path (@len bytes, before any query) names; fills req->id. */
static enum http_route route_of(const char *path, size_t len, struct http_req *req)
{
    static const char jobs_api[] = "/api/jobs", jobs_files[] = "/jobs/";
    const size_t api_len = sizeof jobs_api - 1, files_len = sizeof jobs_files - 1;
    const char *id, *file = NULL;
    size_t id_len, file_len = 0;

    if (len == 1 && path[0] == '/')
        return ROUTE_PAGE;
    if (len == api_len && memcmp(path, jobs_api, api_len) == 0)
        return ROUTE_JOBS;
    if (len > api_len + 1 && memcmp(path, jobs_api, api_len) == 0 && path[api_len] == '/') {
        id = path + api_len + 1;
        id_len = len - api_len - 1;
    } else if (len > files_len && memcmp(path, jobs_files, files_len) == 0) {
        id = path + files_len;
        const char *slash = memchr(id, '/', len - files_len);
        if (!slash)
            return ROUTE_NONE;
        id_len = (size_t)(slash - id);
        file = slash + 1;
        file_len = (size_t)(path + len - file);
    } else {
        return ROUTE_NONE;
    }
    if (id_len == 0 || id_len > P2V_PROTO_JOB_MAX || memchr(id, '/', id_len))
        return ROUTE_NONE;
    memcpy(req->id, id, id_len);
    req->id[id_len] = '\0';
    if (!srv_job_id_ok(req->id))
        return ROUTE_NONE;
    if (!file)
        return ROUTE_JOB;
    if (file_len == strlen("report.json") && memcmp(file, "report.json", file_len) == 0)
        return ROUTE_REPORT;
    if (file_len == strlen("serial.log") && memcmp(file, "serial.log", file_len) == 0)
        return ROUTE_SERIAL;
    return ROUTE_NONE;
}

/* Parse a request head held in memory: the request line, then header fields up to the
 * empty line that ends @len bytes (RFC 9112 §2-5). 0 for a GET or HEAD (@req filled),
 * else the status to answer: 400 (malformed), 405 (another method), 505 (a version other
 * than HTTP/1.0 or 1.1). */
static int http_parse_head(const uint8_t *buf, size_t len, struct http_req *req)
{
    struct p2v_rd r;
    const uint8_t *line;
    size_t n;
    unsigned hosts = 0;

    memset(req, 0, sizeof *req);
    p2v_rd_init(&r, buf, len);
    /* RFC 9112 §2.2: an empty line before the request line is ignored */
    do {
        if (rd_line(&r, &line, &n) < 0)
            return 400;
    } while (n == 0);

    /* request-line = method SP request-target SP HTTP-version (§3) */
    const uint8_t *sp1 = memchr(line, ' ', n);
    if (!sp1 || sp1 == line)
        return 400;
    size_t mlen = (size_t)(sp1 - line);
    const uint8_t *target = sp1 + 1;
    const uint8_t *sp2 = memchr(target, ' ', n - mlen - 1);
    if (!sp2 || sp2 == target)
        return 400;
    size_t tlen = (size_t)(sp2 - target);
    const uint8_t *version = sp2 + 1;
    size_t vlen = n - mlen - tlen - 2;
    for (size_t i = 0; i < mlen; i++)
        if (!is_tchar(line[i]))
            return 400;
    for (size_t i = 0; i < tlen; i++)
        if (target[i] <= 0x20 || target[i] >= 0x7f)
            return 400;
    bool v11 = vlen == 8 && memcmp(version, "HTTP/1.1", 8) == 0;
    bool v10 = vlen == 8 && memcmp(version, "HTTP/1.0", 8) == 0;
    if (!v10 && !v11) {
        bool shaped = vlen == 8 && memcmp(version, "HTTP/", 5) == 0 && version[5] >= '0' &&
                      version[5] <= '9' && version[6] == '.' && version[7] >= '0' &&
                      version[7] <= '9';
        return shaped ? 505 : 400;
    }
    /* only the origin form: an absolute path and an optional query (§3.2.1) */
    if (target[0] != '/')
        return 400;
    const uint8_t *method = line;
    memcpy(req->method, method, P2V_MIN(mlen, (size_t)HTTP_METHOD_MAX));
    snprintf(req->path, sizeof req->path, "%.*s", (int)P2V_MIN(tlen, sizeof req->path - 1),
             (const char *)target);

    /* field-line = field-name ":" OWS field-value OWS (§5) */
    for (;;) {
        if (rd_line(&r, &line, &n) < 0)
            return 400;
        if (n == 0)
            break;
        const uint8_t *colon = memchr(line, ':', n);
        if (!colon || colon == line)
            return 400; /* no name, or obsolete line folding (a leading SP / HT) */
        size_t nlen = (size_t)(colon - line);
        for (size_t i = 0; i < nlen; i++)
            if (!is_tchar(line[i]))
                return 400;
        for (size_t i = nlen + 1; i < n; i++)
            if ((line[i] < 0x20 && line[i] != '\t') || line[i] == 0x7f)
                return 400;
        if (nlen == 4 && strncasecmp((const char *)line, "host", 4) == 0)
            hosts++;
    }
    if (p2v_rd_left(&r) != 0)
        return 400;
    /* RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host */
    if (v11 ? hosts != 1 : hosts > 1)
        return 400;

    size_t plen = tlen;
    const uint8_t *q = memchr(target, '?', tlen);
    if (q)
        plen = (size_t)(q - target);
    if (mlen == 4 && memcmp(method, "HEAD", 4) == 0)
        req->head = true;
    else if (!(mlen == 3 && memcmp(method, "GET", 3) == 0))
        return 405;
    req->route = route_of((const char *)target, plen, req);
    return 0;
}

/* ---------------------------------------------------------------- connections */

enum http_phase {
    HC_FREE,
    HC_READ,    /* reading the request head */
    HC_WRITE,   /* sending the response */
    HC_LINGER,  /* response sent and our side shut: reading what the client still sends */
};

struct http_conn {
    int fd;
    enum http_phase phase;
    double deadline;            /* p2v_now() */
    char peer[64];
    uint8_t head[HTTP_HEAD_MAX];
    size_t head_len;
    struct p2v_buf out;         /* the response head and an in-memory body */
    size_t out_off;
    int file_fd;                /* a body streamed from a file, -1 when none */
    uint64_t file_off, file_len;
    uint8_t chunk[HTTP_FILE_CHUNK];
    size_t chunk_off, chunk_len;
    size_t lingered;
};

struct srv_http {
    struct srv_store *st;
    int listen_fd;
    int stop_pipe[2];
    int port;
    char host[256];             /* ADDR as given (an IPv6 literal keeps its brackets) */
    pthread_t thread;
    struct http_conn conns[HTTP_CONN_MAX];
};

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Internal Server Error";
    }
}

/* RFC 9110 §5.6.7 IMF-fixdate, whatever the locale */
static void http_date(char out[40])
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    time_t t = time(NULL);
    gmtime_r(&t, &tm);
    snprintf(out, 40, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7], tm.tm_mday,
             months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* The response head: @len body bytes follow (unless the request was HEAD). */
static int put_head(struct p2v_buf *b, int status, const char *type, uint64_t len)
{
    char date[40];
    http_date(date);
    return p2v_buf_printf(
        b,
        "HTTP/1.1 %d %s\r\n"
        "Date: %s\r\n"
        "Content-Type: %s\r\n"
        "Content-Length: %llu\r\n"
        "Cache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Referrer-Policy: no-referrer\r\n"
        "%s%s"
        "Connection: close\r\n"
        "\r\n",
        status, status_text(status), date, type, (unsigned long long)len,
        status == 405 ? "Allow: GET, HEAD\r\n" : "",
        strncmp(type, "text/html", 9) == 0
            ? "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
              "style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'none'\r\n"
            : "");
}

static int respond(struct http_conn *c, int status, const char *type, const void *body,
                   size_t len, bool head)
{
    p2v_buf_reset(&c->out);
    c->out_off = 0;
    if (put_head(&c->out, status, type, len) < 0 || (!head && p2v_buf_put(&c->out, body, len) < 0))
        return -1;
    return 0;
}

static int respond_error(struct http_conn *c, int status, bool head)
{
    char body[64];
    int n = snprintf(body, sizeof body, "%d %s\n", status, status_text(status));
    return respond(c, status, "text/plain; charset=utf-8", body, (size_t)n, head);
}

/* A short answer sent at most once, without waiting, on a connection about to be closed
 * (over the connection cap, or a head that did not come in time). */
static void send_now(int fd, int status)
{
    char text[256];
    int n = snprintf(text, sizeof text,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%d %s\n",
                     status, status_text(status), strlen(status_text(status)) + 5, status,
                     status_text(status));
    ssize_t w = send(fd, text, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
}

/* Open @route's file of job @id read-only: STORE/jobs/ID/report.json or
 * STORE/jobs/ID/verify/serial.log, each component with O_NOFOLLOW. fd, or -1 with errno
 * (ENOENT also for anything but a regular file). */
static int open_job_file(struct srv_store *st, const char *id, enum http_route route)
{
    const int dflags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    int fd = -1, e = 0;
    int dfd = openat(st->jobsfd, id, dflags);
    if (dfd >= 0 && route == ROUTE_SERIAL) {
        int vfd = openat(dfd, "verify", dflags);
        e = errno;
        close(dfd);
        dfd = vfd;
        errno = e;
    }
    if (dfd < 0)
        return -1;
    /* O_NONBLOCK: a FIFO put there must not hold up the loop at open */
    fd = openat(dfd, route == ROUTE_SERIAL ? "serial.log" : "report.json",
                O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    e = errno;
    close(dfd);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) < 0) {
        e = errno;
        close(fd);
        fd = -1;
    } else if (fd >= 0 && !S_ISREG(sb.st_mode)) {
        e = ENOENT;
        close(fd);
        fd = -1;
    }
    errno = e;
    return fd;
}

/* Build the response to the head in c->head[0..@len): 0, or -1 to drop the connection. */
static int handle(struct srv_http *h, struct http_conn *c, size_t len)
{
    struct http_req req;
    struct p2v_err err = {0};
    int status = http_parse_head(c->head, len, &req), r = -1;
    struct p2v_buf body;
    p2v_buf_init(&body, 0);

    if (status != 0) {
        r = respond_error(c, status, false);
        goto out;
    }
    status = 200;
    switch (req.route) {
    case ROUTE_PAGE:
        r = respond(c, 200, "text/html; charset=utf-8", http_page, sizeof http_page - 1,
                    req.head);
        break;
    case ROUTE_JOBS:
    case ROUTE_JOB:
        if (srv_status_json(h->st, req.route == ROUTE_JOB ? req.id : NULL, true, false, &body,
                            &err) < 0) {
            status = err.code == ENOENT ? 404 : 500;
            if (status == 500)
                srv_store_log(h->st, P2V_LOG_WARN, "http: %s: %s", c->peer, err.msg);
            r = respond_error(c, status, req.head);
            break;
        }
        if (p2v_buf_put(&body, "\n", 1) < 0)
            break;
        r = respond(c, 200, "application/json", body.data, body.len, req.head);
        break;
    case ROUTE_REPORT:
    case ROUTE_SERIAL: {
        int fd = open_job_file(h->st, req.id, req.route);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) < 0) {
            int e = errno;
            status = e == ENOENT || e == ENOTDIR || e == ELOOP ? 404 : 500;
            if (status == 500)
                srv_store_log(h->st, P2V_LOG_WARN, "http: %s: %s of job '%s': %s", c->peer,
                              req.route == ROUTE_SERIAL ? "verify/serial.log" : "report.json",
                              req.id, strerror(e));
            if (fd >= 0)
                close(fd);
            r = respond_error(c, status, req.head);
            break;
        }
        r = respond(c, 200,
                    req.route == ROUTE_SERIAL ? "text/plain; charset=utf-8" : "application/json",
                    NULL, (size_t)sb.st_size, true);
        if (r == 0 && !req.head && sb.st_size > 0) {
            c->file_fd = fd;
            c->file_off = 0;
            c->file_len = (uint64_t)sb.st_size;
        } else {
            close(fd);
        }
        break;
    }
    case ROUTE_NONE:
        status = 404;
        r = respond_error(c, 404, req.head);
        break;
    }
out:
    if (status == 200 && r < 0)
        status = 500;
    srv_store_log(h->st, P2V_LOG_DEBUG, "http: %s: %s %s: %d", c->peer,
                  req.method[0] ? req.method : "-", req.path[0] ? req.path : "-", status);
    p2v_buf_release(&body);
    return r;
}

static void conn_close(struct http_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    if (c->file_fd >= 0)
        close(c->file_fd);
    c->fd = c->file_fd = -1;
    p2v_buf_release(&c->out);
    c->phase = HC_FREE;
}

/* Send what is left of the response. 1 when all is sent, 0 when the socket is full, -1
 * on an error (or a served file that shrank: its Content-Length cannot be met). */
static int conn_send(struct http_conn *c)
{
    for (;;) {
        const uint8_t *p;
        size_t n;
        bool from_out = c->out_off < c->out.len;
        if (from_out) {
            p = c->out.data + c->out_off;
            n = c->out.len - c->out_off;
        } else if (c->chunk_off < c->chunk_len) {
            p = c->chunk + c->chunk_off;
            n = c->chunk_len - c->chunk_off;
        } else if (c->file_fd >= 0 && c->file_off < c->file_len) {
            size_t want = (size_t)P2V_MIN((uint64_t)HTTP_FILE_CHUNK, c->file_len - c->file_off);
            ssize_t got = p2v_pread_full(c->file_fd, c->chunk, want, c->file_off);
            if (got < 0 || (size_t)got != want)
                return -1;
            c->chunk_off = 0;
            c->chunk_len = want;
            c->file_off += want;
            continue;
        } else {
            return 1;
        }
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        if (from_out)
            c->out_off += (size_t)w;
        else
            c->chunk_off += (size_t)w;
        c->deadline = p2v_now() + HTTP_SEND_TIMEOUT_MS / 1000.0;
    }
}

/* The end of the head in c->head (after the empty line; a bare LF is taken for CRLF,
 * RFC 9112 §2.2), searched from @from; 0 when not there yet. */
static size_t head_end(const struct http_conn *c, size_t from)
{
    for (size_t i = from; i < c->head_len; i++) {
        if (c->head[i] != '\n')
            continue;
        if (i + 1 < c->head_len && c->head[i + 1] == '\n')
            return i + 2;
        if (i + 2 < c->head_len && c->head[i + 1] == '\r' && c->head[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

static void conn_sent(struct http_conn *c)
{
    /* half-close, then read what the client still sends for a moment: closing with
     * unread bytes would reset the connection and could lose the response */
    shutdown(c->fd, SHUT_WR);
    c->phase = HC_LINGER;
    c->lingered = 0;
    c->deadline = p2v_now() + HTTP_LINGER_MS / 1000.0;
}

static void conn_event(struct srv_http *h, struct http_conn *c, short revents)
{
    if (c->phase == HC_READ) {
        size_t old = c->head_len;
        ssize_t n = recv(c->fd, c->head + old, sizeof c->head - old, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            conn_close(c); /* closed (or failed) before a whole head came */
            return;
        }
        c->head_len += (size_t)n;
        size_t end = head_end(c, old > 2 ? old - 2 : 0);
        if (end > 0) {
            if (handle(h, c, end) < 0) {
                conn_close(c);
                return;
            }
        } else if (c->head_len == sizeof c->head) {
            srv_store_log(h->st, P2V_LOG_DEBUG, "http: %s: request head over %u bytes: 431",
                          c->peer, HTTP_HEAD_MAX);
            if (respond_error(c, 431, false) < 0) {
                conn_close(c);
                return;
            }
        } else {
            return;
        }
        c->phase = HC_WRITE;
        c->deadline = p2v_now() + HTTP_SEND_TIMEOUT_MS / 1000.0;
        /* and send at once, without waiting for a poll round */
    }
    if (c->phase == HC_WRITE) {
        int r = conn_send(c);
        if (r < 0)
            conn_close(c);
        else if (r > 0)
            conn_sent(c);
        return;
    }
    if (c->phase == HC_LINGER && (revents & (POLLIN | POLLHUP | POLLERR))) {
        for (;;) {
            ssize_t n = recv(c->fd, c->chunk, sizeof c->chunk, MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n <= 0 || (c->lingered += (size_t)n) > HTTP_LINGER_MAX) {
                conn_close(c);
                return;
            }
        }
    }
}

static void peer_name(const struct sockaddr_storage *ss, socklen_t len, char *out,
                      size_t size)
{
    char host[48], serv[8];
    if (getnameinfo((const struct sockaddr *)ss, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        snprintf(out, size, "?");
    else if (ss->ss_family == AF_INET6)
        snprintf(out, size, "[%s]:%s", host, serv);
    else
        snprintf(out, size, "%s:%s", host, serv);
}

static void accept_conn(struct srv_http *h)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(h->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            srv_store_log(h->st, P2V_LOG_ERROR, "http: accept: %s", strerror(errno));
            struct timespec ts = {0, 100 * 1000 * 1000}; /* do not spin */
            nanosleep(&ts, NULL);
        }
        return;
    }
    struct http_conn *c = NULL;
    for (unsigned i = 0; i < HTTP_CONN_MAX && !c; i++)
        if (h->conns[i].phase == HC_FREE)
            c = &h->conns[i];
    if (!c) {
        /* read what already came: closing on unread bytes would reset the connection
         * and could lose the answer */
        uint8_t scratch[4096];
        for (int i = 0; i < 4 && recv(fd, scratch, sizeof scratch, MSG_DONTWAIT) > 0; i++)
            ;
        send_now(fd, 503);
        close(fd);
        return;
    }
    c->fd = fd;
    c->phase = HC_READ;
    c->deadline = p2v_now() + HTTP_HEAD_TIMEOUT_MS / 1000.0;
    c->head_len = 0;
    c->out_off = 0;
    c->file_fd = -1;
    c->file_off = c->file_len = 0;
    c->chunk_off = c->chunk_len = 0;
    p2v_buf_init(&c->out, 0);
    peer_name(&ss, len, c->peer, sizeof c->peer);
}

static void *http_main(void *arg)
{
    struct srv_http *h = arg;
    struct pollfd pfd[2 + HTTP_CONN_MAX];
    struct http_conn *pc[2 + HTTP_CONN_MAX];

    for (;;) {
        double now = p2v_now();
        int timeout = -1;
        nfds_t n = 0;
        pfd[n++] = (struct pollfd){.fd = h->stop_pipe[0], .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = h->listen_fd, .events = POLLIN};
        for (unsigned i = 0; i < HTTP_CONN_MAX; i++) {
            struct http_conn *c = &h->conns[i];
            if (c->phase == HC_FREE)
                continue;
            if (now >= c->deadline) {
                if (c->phase == HC_READ) {
                    srv_store_log(h->st, P2V_LOG_DEBUG, "http: %s: no request head in %d s",
                                  c->peer, HTTP_HEAD_TIMEOUT_MS / 1000);
                    send_now(c->fd, 408);
                }
                conn_close(c);
                continue;
            }
            int ms = (int)((c->deadline - now) * 1000) + 1;
            timeout = timeout < 0 ? ms : P2V_MIN(timeout, ms);
            pc[n] = c;
            pfd[n++] = (struct pollfd){.fd = c->fd,
                                       .events = c->phase == HC_WRITE ? POLLOUT : POLLIN};
        }
        int r = poll(pfd, n, timeout);
        if (r < 0) {
            if (errno != EINTR) {
                srv_store_log(h->st, P2V_LOG_ERROR, "http: poll: %s", strerror(errno));
                struct timespec ts = {0, 100 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        if (pfd[0].revents)
            break;
        for (nfds_t k = 2; k < n; k++)
            if (pfd[k].revents)
                conn_event(h, pc[k], pfd[k].revents);
        if (pfd[1].revents & POLLIN)
            accept_conn(h);
    }
    for (unsigned i = 0; i < HTTP_CONN_MAX; i++)
        if (h->conns[i].phase != HC_FREE)
            conn_close(&h->conns[i]);
    return NULL;
}

/* ---------------------------------------------------------------- start, stop */

static void http_free(struct srv_http *h)
{
    if (h->listen_fd >= 0)
        close(h->listen_fd);
    for (int i = 0; i < 2; i++)
        if (h->stop_pipe[i] >= 0)
            close(h->stop_pipe[i]);
    free(h);
}

int srv_http_start(struct srv_http **out, struct srv_store *st, const char *addr,
                   struct p2v_err *err)
{
    struct srv_http *h = calloc(1, sizeof *h);
    if (!h)
        return p2v_err_set(err, ENOMEM, "out of memory");
    h->st = st;
    h->listen_fd = -1;
    h->stop_pipe[0] = h->stop_pipe[1] = -1;
    for (unsigned i = 0; i < HTTP_CONN_MAX; i++) {
        h->conns[i].fd = h->conns[i].file_fd = -1;
        h->conns[i].phase = HC_FREE;
        p2v_buf_init(&h->conns[i].out, 0);
    }
    /* the host part as given, for the log line (the address itself is checked by
     * p2v_tcp_listen) */
    const char *colon = addr[0] == '[' ? strchr(addr, ']') : strrchr(addr, ':');
    size_t hlen = !colon ? strlen(addr) : addr[0] == '[' ? (size_t)(colon - addr) + 1
                                                         : (size_t)(colon - addr);
    snprintf(h->host, sizeof h->host, "%.*s", (int)P2V_MIN(hlen, sizeof h->host - 1), addr);

    h->listen_fd = p2v_tcp_listen(addr, err);
    if (h->listen_fd < 0) {
        p2v_err_prefix(err, "--http");
        goto fail;
    }
    int fl = fcntl(h->listen_fd, F_GETFL);
    if (fl < 0 || fcntl(h->listen_fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        pipe2(h->stop_pipe, O_CLOEXEC) < 0) {
        p2v_err_errno(err, "--http '%s'", addr);
        goto fail;
    }
    h->port = p2v_tcp_local_port(h->listen_fd);

    /* SIGTERM / SIGINT go to the accept loop of run.c, not to this thread */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int e = pthread_create(&h->thread, NULL, http_main, h);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        p2v_err_set(err, e, "cannot start the status page's thread: %s", strerror(e));
        goto fail;
    }
    *out = h;
    return 0;
fail:
    http_free(h);
    return -1;
}

int srv_http_port(const struct srv_http *h)
{
    return h->port;
}

void srv_http_url(const struct srv_http *h, char *out, size_t len)
{
    snprintf(out, len, "http://%s:%d/", h->host, h->port);
}

void srv_http_stop(struct srv_http *h)
{
    if (!h)
        return;
    ssize_t w = write(h->stop_pipe[1], "x", 1);
    (void)w;
    pthread_join(h->thread, NULL);
    http_free(h);
}
