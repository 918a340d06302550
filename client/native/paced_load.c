/*
 * charter-paced: the benchmark's paced (open-loop) writer and commit watcher, in C.
 *
 * The Python paced client of charter.bench_commit costs ~370 us of CPU per write on the
 * 2-core benchmark machine: at half load that is a third of a core taken from the nodes
 * whose latency it measures. This program does the same work for a few microseconds per
 * write (OpenSSL, one thread, ppoll):
 *
 *   - write i is due at t0 + i / RATE; it goes out on the first idle connection once due
 *     and its latency counts from when it was due (a client that falls behind cannot hide
 *     the queueing);
 *   - a watcher connection GETs WATCH_PATH (/node/commit) every POLL_MS after its previous
 *     answer and records each commit point it sees;
 *   - after the last write it writes an end marker and keeps watching until the marker's
 *     seqno is committed in its view, then polls twice more.
 *
 * It computes nothing: OUT receives one line per event and charter.bench_paced reads them,
 * with the same bounds and the same arithmetic as the Python client's results.
 *
 *   T <t0_ns> <elapsed_ns>                   the paced part (CLOCK_MONOTONIC)
 *   W <due_ns> <answered_ns> <view> <seqno>  a write answered 2xx with a transaction id
 *   X <code> <text>                          a write that failed (HTTP status, or 0)
 *   O <seen_ns> <view> <seqno>               a commit point the watcher saw
 *   M <view> <seqno>                         the end marker
 *
 * Usage: charter-paced HOST PORT WRITE_PATH WATCH_PATH CA CERT KEY RATE DURATION_S
 *                      CLIENTS POLL_MS OUT
 * Exit: 0 done; 2 usage; 3 setup (TLS, connect); 4 the run failed (see stderr).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CLIENTS_MAX 512
#define HEAD_BYTES_MAX (16 * 1024)
#define BODY_BYTES_MAX (64 * 1024)
#define BUFFER_BYTES (HEAD_BYTES_MAX + BODY_BYTES_MAX)
#define WRITES_MAX 2000000
#define RATE_MAX 100000.0
#define DURATION_S_MAX 600.0
#define POLL_MS_MAX 1000
#define EXTRA_WAIT_NS (30LL * 1000000000LL)  /* past the duration, as the Python client */
#define MARKER_WAIT_NS (60LL * 1000000000LL) /* the end marker's commit */
#define HANDSHAKE_TIMEOUT_S 5                /* each blocking step of a connect and TLS handshake */
#define ID_STRIDE (1ULL << 32)
#define MARKER_ID 7
#define TXID_HEADER "x-ms-ccf-transaction-id"

enum state { IDLE, BUSY, DEAD };
enum role { WRITER, WATCHER, MARKER };

struct conn {
    int fd;
    SSL *ssl;
    enum state state;
    char out[512];
    size_t out_len, out_sent;
    int fresh; /* a request started and not yet tried on the socket */
    char in[BUFFER_BYTES];
    size_t in_len;
    int64_t due_ns; /* of the write in flight */
    enum role role;
};

struct answer {
    int status;
    char txid[64]; /* "" when absent */
    const char *body;
    size_t body_len;
};

static FILE *out_file;
static SSL_CTX *ctx;
static struct sockaddr_in address;
static const char *host;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("charter-paced: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    ERR_print_errors_fp(stderr);
    exit(code);
}

/* A blocking TLS connection, made non-blocking once the handshake is done. The connect
 * and the handshake block for at most HANDSHAKE_TIMEOUT_S each step: a server that accepts
 * and then says nothing fails the connection instead of holding the tool. */
static int open_conn(struct conn *c, enum role role) {
    memset(c, 0, sizeof *c);
    c->role = role;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) {
        return -1;
    }
    struct timeval limit = {.tv_sec = HANDSHAKE_TIMEOUT_S};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    if (connect(c->fd, (struct sockaddr *)&address, sizeof address) != 0) {
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL) {
        return -1;
    }
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host);
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) {
        return -1;
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->state = IDLE;
    return 0;
}

static void close_conn(struct conn *c) {
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
    c->state = DEAD;
}

static void start_request(struct conn *c, const char *method, const char *path,
                          const char *body) {
    size_t body_len = body ? strlen(body) : 0;
    int n;
    if (body) {
        n = snprintf(c->out, sizeof c->out,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, host, body_len, body);
    } else {
        n = snprintf(c->out, sizeof c->out, "%s %s HTTP/1.1\r\nHost: %s\r\n\r\n", method, path,
                     host);
    }
    if (n < 0 || (size_t)n >= sizeof c->out) {
        die(4, "request too long");
    }
    c->out_len = (size_t)n;
    c->out_sent = 0;
    c->in_len = 0;
    c->state = BUSY;
    c->fresh = 1;
}

static void write_body(char *buf, size_t size, uint64_t id, const char *label) {
    snprintf(buf, size, "{\"id\": %" PRIu64 ", \"msg\": \"%s %" PRIu64 "\"}", id, label, id);
}

/* Parse a complete answer in c->in: 1 complete, 0 more bytes needed, -1 malformed. */
static int parse_answer(struct conn *c, struct answer *a, const char **why) {
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (c->in_len > HEAD_BYTES_MAX) {
            *why = "answer headers exceed the limit";
            return -1;
        }
        return 0;
    }
    size_t head_len = (size_t)(end - c->in) + 4;
    if (head_len > HEAD_BYTES_MAX) {
        *why = "answer headers exceed the limit";
        return -1;
    }
    if (c->in_len < 12 || strncmp(c->in, "HTTP/1.", 7) != 0 || c->in[8] != ' ' ||
        c->in[9] < '0' || c->in[9] > '9' || c->in[10] < '0' || c->in[10] > '9' ||
        c->in[11] < '0' || c->in[11] > '9') {
        *why = "malformed status line";
        return -1;
    }
    a->status = (c->in[9] - '0') * 100 + (c->in[10] - '0') * 10 + (c->in[11] - '0');
    a->txid[0] = '\0';
    long length = -1;
    char *line = memchr(c->in, '\n', head_len) + 1;
    while (line < c->in + head_len - 2) {
        char *eol = memchr(line, '\r', (size_t)(c->in + head_len - line));
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon != NULL) {
            size_t name_len = (size_t)(colon - line);
            char *value = colon + 1;
            while (value < eol && (*value == ' ' || *value == '\t')) {
                value++;
            }
            size_t value_len = (size_t)(eol - value);
            while (value_len > 0 && (value[value_len - 1] == ' ')) {
                value_len--;
            }
            if (name_len == 14 && strncasecmp(line, "content-length", 14) == 0) {
                length = 0;
                for (size_t i = 0; i < value_len; i++) {
                    if (value[i] < '0' || value[i] > '9' || length > BODY_BYTES_MAX) {
                        length = BODY_BYTES_MAX + 1;
                        break;
                    }
                    length = length * 10 + (value[i] - '0');
                }
                if (value_len == 0) {
                    length = -1;
                }
            } else if (name_len == strlen(TXID_HEADER) &&
                       strncasecmp(line, TXID_HEADER, name_len) == 0 &&
                       value_len < sizeof a->txid) {
                memcpy(a->txid, value, value_len);
                a->txid[value_len] = '\0';
            }
        }
        line = eol + 2;
    }
    if (length < 0 || length > BODY_BYTES_MAX) {
        *why = "answer without a Content-Length within the limit";
        return -1;
    }
    if (c->in_len < head_len + (size_t)length) {
        return 0;
    }
    if (c->in_len > head_len + (size_t)length) {
        *why = "bytes after the answer (no request was pipelined)";
        return -1;
    }
    a->body = c->in + head_len;
    a->body_len = (size_t)length;
    return 1;
}

/* "V.S" with two unsigned integers and nothing else. */
static int parse_txid(const char *text, size_t len, uint64_t *view, uint64_t *seqno) {
    char buf[64];
    if (len == 0 || len >= sizeof buf) {
        return -1;
    }
    memcpy(buf, text, len);
    buf[len] = '\0';
    char *dot = strchr(buf, '.');
    if (dot == NULL || dot == buf || dot[1] == '\0') {
        return -1;
    }
    for (char *p = buf; *p; p++) {
        if (p != dot && (*p < '0' || *p > '9')) {
            return -1;
        }
    }
    *view = strtoull(buf, NULL, 10);
    *seqno = strtoull(dot + 1, NULL, 10);
    return 0;
}

/* The transaction id in /node/commit's {"transaction_id": "V.S"}. */
static int parse_commit_body(const struct answer *a, uint64_t *view, uint64_t *seqno) {
    const char *key = memmem(a->body, a->body_len, "\"transaction_id\"", 16);
    if (key == NULL) {
        return -1;
    }
    const char *end = a->body + a->body_len;
    const char *p = key + 16;
    while (p < end && (*p == ' ' || *p == ':')) {
        p++;
    }
    if (p >= end || *p != '"') {
        return -1;
    }
    const char *close = memchr(p + 1, '"', (size_t)(end - p - 1));
    if (close == NULL) {
        return -1;
    }
    return parse_txid(p + 1, (size_t)(close - p - 1), view, seqno);
}

/* Move bytes both ways: 1 an answer is complete in c->in, 0 waiting, -1 the connection
 * failed (why says how). */
static int pump(struct conn *c, struct answer *a, const char **why) {
    while (c->out_sent < c->out_len) {
        int n = SSL_write(c->ssl, c->out + c->out_sent, (int)(c->out_len - c->out_sent));
        if (n > 0) {
            c->out_sent += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            return 0;
        }
        *why = "connection failed while writing";
        return -1;
    }
    for (;;) {
        if (c->in_len == sizeof c->in) {
            *why = "answer exceeds the limit";
            return -1;
        }
        int n = SSL_read(c->ssl, c->in + c->in_len, (int)(sizeof c->in - c->in_len));
        if (n > 0) {
            c->in_len += (size_t)n;
            int done = parse_answer(c, a, why);
            if (done != 0) {
                return done;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            return 0;
        }
        *why = c->in_len ? "connection closed mid-answer" : "connection closed";
        return -1;
    }
}

/* One request and its answer on a blocking wait (warming a connection up). */
static int round_trip(struct conn *c, struct answer *a, const char **why) {
    int64_t deadline = now_ns() + 10LL * 1000000000LL;
    for (;;) {
        int r = pump(c, a, why);
        if (r != 0) {
            return r;
        }
        if (now_ns() > deadline) {
            *why = "no answer within 10 s";
            return -1;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLOUT};
        poll(&p, 1, 100);
    }
}

static double parse_number(const char *text, const char *what, double lo, double hi) {
    char *end;
    double v = strtod(text, &end);
    if (*end != '\0' || !(v >= lo && v <= hi)) {
        die(2, "%s must be a number in [%g, %g], not %s", what, lo, hi, text);
    }
    return v;
}

static void record_error(int code, const char *text) {
    fprintf(out_file, "X %d %s\n", code, text);
}

int main(int argc, char **argv) {
    if (argc != 13) {
        fprintf(stderr, "usage: charter-paced HOST PORT WRITE_PATH WATCH_PATH CA CERT KEY "
                        "RATE DURATION_S CLIENTS POLL_MS OUT\n");
        return 2;
    }
    /* A connection the server closed is an error to count, not a reason to die. */
    signal(SIGPIPE, SIG_IGN);
    host = argv[1];
    int port = (int)parse_number(argv[2], "PORT", 1, 65535);
    const char *write_path = argv[3], *watch_path = argv[4];
    double rate = parse_number(argv[8], "RATE", 0.001, RATE_MAX);
    double duration_s = parse_number(argv[9], "DURATION_S", 0.001, DURATION_S_MAX);
    int clients = (int)parse_number(argv[10], "CLIENTS", 1, CLIENTS_MAX);
    int64_t poll_ns = (int64_t)parse_number(argv[11], "POLL_MS", 1, POLL_MS_MAX) * 1000000LL;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
        die(2, "HOST must be an IPv4 address, not %s", host);
    }
    out_file = fopen(argv[12], "w");
    if (out_file == NULL) {
        die(3, "cannot write %s: %s", argv[12], strerror(errno));
    }
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        SSL_CTX_load_verify_locations(ctx, argv[5], NULL) != 1 ||
        SSL_CTX_use_certificate_file(ctx, argv[6], SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[7], SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        die(3, "cannot set up TLS from %s, %s and %s", argv[5], argv[6], argv[7]);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);

    static struct conn conns[CLIENTS_MAX + 1]; /* the writers, then the watcher */
    struct conn *watcher = &conns[clients];
    struct answer a;
    const char *why = "";
    char body[128];
    for (int i = 0; i <= clients; i++) {
        if (open_conn(&conns[i], i < clients ? WRITER : WATCHER) != 0) {
            die(3, "cannot connect to %s:%d with TLS", host, port);
        }
    }
    /* Warm every writer (its first answer) before the clock starts, as the Python one. */
    for (int i = 0; i < clients; i++) {
        write_body(body, sizeof body, (uint64_t)(i + 1) * ID_STRIDE, "latency record");
        start_request(&conns[i], "POST", write_path, body);
        if (round_trip(&conns[i], &a, &why) != 1) {
            die(3, "the first write failed: %s", why);
        }
        conns[i].state = IDLE;
    }

    int64_t total = (int64_t)(rate * duration_s);
    if (total > WRITES_MAX) {
        total = WRITES_MAX;
    }
    int64_t t0 = now_ns(), next = 0, elapsed = -1, next_poll = t0;
    int64_t deadline = t0 + (int64_t)(duration_s * 1e9) + EXTRA_WAIT_NS;
    int live = clients, polls_after_marker = -1;
    uint64_t marker_view = 0, marker_seqno = 0;
    int marker_state = 0; /* 0 not sent, 1 in flight, 2 answered */
    static struct pollfd fds[CLIENTS_MAX + 1];
    static int fd_conn[CLIENTS_MAX + 1]; /* fds[k] is conns[fd_conn[k]] */
    static int ready[CLIENTS_MAX + 1];   /* connections to move bytes on this turn */

    for (;;) {
        int64_t now = now_ns();
        if (now > deadline) {
            die(4, marker_state == 2 ? "the end marker %" PRIu64 ".%" PRIu64
                                       " was not seen committed in time"
                                     : "the writes did not finish in time",
                marker_view, marker_seqno);
        }
        /* Hand every due write to an idle connection. */
        for (int i = 0; i < clients && next < total; i++) {
            struct conn *c = &conns[i];
            int64_t due = t0 + (int64_t)((double)next * 1e9 / rate);
            if (due > now) {
                break;
            }
            if (c->state != IDLE) {
                continue;
            }
            write_body(body, sizeof body, (uint64_t)(i + 1) * ID_STRIDE + (uint64_t)next + 1,
                       "latency record");
            start_request(c, "POST", write_path, body);
            c->due_ns = due;
            next++;
        }
        int busy = 0;
        for (int i = 0; i < clients; i++) {
            busy += conns[i].state == BUSY;
        }
        if ((next == total || live == 0) && busy == 0 && elapsed < 0) {
            elapsed = now - t0;
            fprintf(out_file, "T %" PRId64 " %" PRId64 "\n", t0, elapsed);
            if (live == 0) {
                die(4, "every connection failed (%s)", why);
            }
            for (int i = 0; i < clients; i++) {
                if (conns[i].state == IDLE) {
                    snprintf(body, sizeof body,
                             "{\"id\": %d, \"msg\": \"bench marker latency end\"}", MARKER_ID);
                    start_request(&conns[i], "POST", write_path, body);
                    conns[i].role = MARKER;
                    marker_state = 1;
                    deadline = now + MARKER_WAIT_NS;
                    break;
                }
            }
        }
        if (watcher->state == DEAD && now >= next_poll) {
            if (open_conn(watcher, WATCHER) != 0) { /* a missed poll only coarsens timing */
                close_conn(watcher);
                next_poll = now + poll_ns;
            }
        }
        if (watcher->state == IDLE && now >= next_poll) {
            start_request(watcher, "GET", watch_path, NULL);
        }

        /* Wait for bytes, the next due write or the next poll. */
        int nfds = 0, nready = 0;
        for (int i = 0; i <= clients; i++) {
            struct conn *c = &conns[i];
            if (c->state != BUSY) {
                continue;
            }
            if (c->fresh) { /* just started: write it now, no need to wait */
                c->fresh = 0;
                ready[nready++] = i;
                continue;
            }
            fds[nfds].fd = c->fd;
            fds[nfds].events = c->out_sent < c->out_len ? POLLOUT | POLLIN : POLLIN;
            fds[nfds].revents = 0;
            fd_conn[nfds] = i;
            nfds++;
        }
        int64_t wake = deadline;
        if (next < total) {
            int64_t due = t0 + (int64_t)((double)next * 1e9 / rate);
            if (due < wake) {
                wake = due;
            }
        }
        if (watcher->state != BUSY && next_poll < wake) {
            wake = next_poll;
        }
        int64_t wait = nready ? 0 : wake - now_ns();
        if (wait < 0) {
            wait = 0;
        }
        struct timespec ts = {.tv_sec = wait / 1000000000LL, .tv_nsec = wait % 1000000000LL};
        if (ppoll(fds, (nfds_t)nfds, &ts, NULL) < 0 && errno != EINTR) {
            die(4, "ppoll: %s", strerror(errno));
        }
        for (int k = 0; k < nfds; k++) {
            if (fds[k].revents) {
                ready[nready++] = fd_conn[k];
            }
        }

        for (int k = 0; k < nready; k++) {
            struct conn *c = &conns[ready[k]];
            int r = pump(c, &a, &why);
            if (r == 0) {
                continue;
            }
            int64_t done_ns = now_ns();
            uint64_t view, seqno;
            if (c->role == WATCHER) {
                if (r == 1 && a.status == 200 && parse_commit_body(&a, &view, &seqno) == 0) {
                    fprintf(out_file, "O %" PRId64 " %" PRIu64 " %" PRIu64 "\n", done_ns, view,
                            seqno);
                    if (marker_state == 2 && polls_after_marker < 0 && seqno >= marker_seqno) {
                        if (view != marker_view) {
                            die(4, "the view changed before the end marker %" PRIu64
                                   ".%" PRIu64 " was seen committed",
                                marker_view, marker_seqno);
                        }
                        polls_after_marker = 0;
                    } else if (polls_after_marker >= 0 && ++polls_after_marker >= 2) {
                        fclose(out_file);
                        return 0;
                    }
                }
                if (r == 1) {
                    c->state = IDLE;
                } else {
                    close_conn(c);
                }
                next_poll = done_ns + poll_ns;
                continue;
            }
            if (c->role == MARKER) {
                if (r != 1 || a.status < 200 || a.status >= 300 ||
                    parse_txid(a.txid, strlen(a.txid), &marker_view, &marker_seqno) != 0) {
                    die(4, "the end marker failed: %s",
                        r == 1 ? "no transaction id in a 2xx answer" : why);
                }
                fprintf(out_file, "M %" PRIu64 " %" PRIu64 "\n", marker_view, marker_seqno);
                marker_state = 2;
                c->role = WRITER;
                c->state = IDLE;
                continue;
            }
            if (r == 1) {
                c->state = IDLE;
                if (a.status < 200 || a.status >= 300) {
                    char text[32];
                    snprintf(text, sizeof text, "HTTP %d", a.status);
                    record_error(a.status, text);
                } else if (parse_txid(a.txid, strlen(a.txid), &view, &seqno) == 0) {
                    fprintf(out_file, "W %" PRId64 " %" PRId64 " %" PRIu64 " %" PRIu64 "\n",
                            c->due_ns, done_ns, view, seqno);
                } else {
                    record_error(a.status, "a 2xx answer without a transaction id");
                }
            } else {
                record_error(0, why);
                close_conn(c);
                live--;
            }
        }
    }
}
