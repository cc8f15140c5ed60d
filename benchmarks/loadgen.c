/*
 * loadgen: the benchmark's load client. One thread, epoll, HTTP/1.1 on loopback.
 *
 * It opens S Server-Sent Events subscriptions, waits until every one is ready (channel_asgi:
 * its `init` event arrived, and the first init's token is kept for publishing; other servers:
 * the response headers arrived), then publishes M broadcasts over K keep-alive connections and
 * counts, per subscription, the broadcasts it receives. Each published message carries its
 * sequence number "n" and its send time "t" (CLOCK_MONOTONIC, ns), so the client measures
 * end-to-end latency and notices any lost or repeated delivery.
 *
 *   --rate 0   publish as fast as the server fans out: at most --window broadcasts may be
 *              published and not yet delivered to every subscriber (the saturated figure)
 *   --rate R   publish R broadcasts per second (the latency figure)
 *   --mode idle          open the subscriptions, print a READY line, wait for stdin to close
 *   --mode publish-only  no subscribers kept open; K connections publish for --duration s
 *   --cpu-pid PID        also report the CPU seconds process PID used while publishing
 *   --channels N         spread the subscriptions over N channels (subscription i on channel
 *                        i mod N, the paths' channel name suffixed "-<c>") and publish to them
 *                        round robin (broadcast n on channel n mod N, with the token of that
 *                        channel's first init); 1, the default, is the single channel as above
 *
 * It prints one JSON object on stdout. Build: cc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { SUB = 1, PUB = 2 };
enum { H_HEAD, H_SIZE, H_DATA, H_CRLF, H_DONE };

typedef struct Conn {
    int fd, kind, index;
    int http;                 /* H_* state of the response */
    char *head; size_t head_len, head_cap;
    long chunk_left;
    char *line; size_t line_len, line_cap;
    int ready;                /* SUB: init (or headers) seen */
    long received, dup;
    uint8_t *seen;            /* SUB: bitmap of the sequence numbers received (n / channels) */
    int chan;                 /* SUB: its channel, 0 .. channels - 1 */
    /* PUB */
    int busy; long content_left; int status;
    char *out; size_t out_len, out_off;
} Conn;

static const char *host = "127.0.0.1";
static int port = 8000;
static const char *sub_path = "/subscribe/bench";
static const char *pub_path = "/publish/bench";
static const char *widget_key = "";
static const char *mode = "fanout";
static int n_subs = 100, n_pub = 4, window = 64, size = 200, want_init = 1, n_channels = 1;
static long n_publish = 1000;
static double rate = 0, timeout_s = 120, duration_s = 5;
static int cpu_pids[16], n_cpu_pids = 0; /* --cpu-pid, repeatable: a server and its workers */

static int ep;
static Conn *conns;
static int n_conns;
#define TOKEN_CAP 1024
static char (*tokens)[TOKEN_CAP]; /* the publish token of each channel, from its first init */
static long published, answered, pub_errors, ready_subs, deliveries;
static int64_t first_pub_ns, last_delivery_ns;
#define HIST_US 10000000 /* 10 s at 1 us resolution, in 10 us buckets */
static uint32_t hist[HIST_US / 10 + 1];
static long hist_n;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) { perror(what); exit(2); }

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    *buf = realloc(*buf, c);
    if (!*buf) die("realloc");
    *cap = c;
}

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) die("connect");
    return fd;
}

static void watch(Conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

static void send_all(Conn *c, const char *data, size_t len) {
    /* Requests are small; loopback sockets take them whole. Retry on EAGAIN briefly. */
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(c->fd, data + off, len - off);
        if (w > 0) { off += (size_t)w; continue; }
        if (w < 0 && (errno == EAGAIN || errno == EINTR || errno == ENOTCONN)) {
            struct timespec t = {0, 200000};
            nanosleep(&t, NULL);
            continue;
        }
        die("write");
    }
}

static char *json_str(const char *p, const char *end, const char *key, char *out, size_t cap) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    char *s = memmem(p, (size_t)(end - p), pat, strlen(pat));
    if (!s) return NULL;
    s += strlen(pat);
    char *q = memchr(s, '"', (size_t)(end - s));
    if (!q || (size_t)(q - s) >= cap) return NULL;
    memcpy(out, s, (size_t)(q - s));
    out[q - s] = 0;
    return out;
}

static int json_num(const char *p, const char *end, const char *key, int64_t *out) {
    char pat[32];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    char *s = memmem(p, (size_t)(end - p), pat, strlen(pat));
    if (!s) return 0;
    *out = strtoll(s + strlen(pat), NULL, 10);
    return 1;
}

static void on_event(Conn *c, const char *data, size_t len) {
    const char *end = data + len;
    int64_t n, t;
    if (json_num(data, end, "n", &n) && json_num(data, end, "t", &t)) {
        int64_t now = now_ns();
        if (n < 0 || n >= n_publish) return;
        if (n % n_channels != c->chan) { c->dup++; return; } /* another channel's: counted as a repeat */
        n /= n_channels;
        if (!c->seen) { c->seen = calloc((size_t)(n_publish / n_channels + 8) / 8, 1); if (!c->seen) die("calloc"); }
        uint8_t bit = (uint8_t)(1u << (n & 7));
        if (c->seen[n >> 3] & bit) { c->dup++; return; }
        c->seen[n >> 3] |= bit;
        c->received++;
        deliveries++;
        last_delivery_ns = now;
        int64_t us = (now - t) / 1000;
        if (us < 0) us = 0;
        if (us > HIST_US) us = HIST_US;
        hist[us / 10]++;
        hist_n++;
        return;
    }
    if (!c->ready && memmem(data, len, "\"type\":\"init\"", 13)) {
        if (!tokens[c->chan][0]) json_str(data, end, "token", tokens[c->chan], TOKEN_CAP);
        c->ready = 1;
        ready_subs++;
    }
}

static void on_body(Conn *c, const char *p, size_t len) {
    for (size_t i = 0; i < len; i++) {
        char ch = p[i];
        if (ch == '\n') {
            if (c->line_len >= 5 && memcmp(c->line, "data:", 5) == 0) {
                size_t skip = (c->line_len > 5 && c->line[5] == ' ') ? 6 : 5;
                on_event(c, c->line + skip, c->line_len - skip);
            }
            c->line_len = 0;
        } else if (ch != '\r') {
            /* copy a run of line bytes at once */
            const char *nl = memchr(p + i, '\n', len - i);
            size_t run = (nl ? (size_t)(nl - (p + i)) : len - i);
            grow(&c->line, &c->line_cap, c->line_len + run + 1);
            memcpy(c->line + c->line_len, p + i, run);
            c->line_len += run;
            if (run && c->line[c->line_len - 1] == '\r') c->line_len--;
            i += run - 1;
        }
    }
}

/* The value after `name` (lower case, with its colon) in a response head, whatever the case of
 * the server's header names (Twisted, under daphne, capitalises them); NULL when absent. */
static const char *header_value(const char *head, size_t len, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i + n <= len; i++) {
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, name, n) == 0) return head + i + n;
    }
    return NULL;
}

/* De-chunk an HTTP/1.1 response body into on_body. */
static void on_bytes(Conn *c, const char *p, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (c->http == H_HEAD) {
            grow(&c->head, &c->head_cap, c->head_len + 1);
            c->head[c->head_len++] = p[i++];
            if (c->head_len >= 4 && memcmp(c->head + c->head_len - 4, "\r\n\r\n", 4) == 0) {
                c->status = atoi(c->head + 9);
                if (c->kind == SUB) {
                    if (c->status != 200) { fprintf(stderr, "subscribe status %d\n", c->status); exit(3); }
                    c->http = H_SIZE;
                    if (!want_init && !c->ready) { c->ready = 1; ready_subs++; }
                } else {
                    const char *cl = header_value(c->head, c->head_len, "content-length:");
                    c->content_left = cl ? strtol(cl, NULL, 10) : 0;
                    c->http = c->content_left ? H_DATA : H_DONE;
                }
                c->head_len = 0;
            }
        } else if (c->kind == PUB) {
            size_t take = len - i < (size_t)c->content_left ? len - i : (size_t)c->content_left;
            c->content_left -= (long)take;
            i += take;
            if (c->content_left == 0) c->http = H_DONE;
        } else if (c->http == H_SIZE) {
            char ch = p[i++];
            if (ch == '\n') { c->http = c->chunk_left ? H_DATA : H_DONE; }
            else if (ch != '\r') {
                int v = (ch >= '0' && ch <= '9') ? ch - '0' : (ch | 32) - 'a' + 10;
                c->chunk_left = c->chunk_left * 16 + v;
            }
        } else if (c->http == H_DATA) {
            size_t take = len - i < (size_t)c->chunk_left ? len - i : (size_t)c->chunk_left;
            on_body(c, p + i, take);
            c->chunk_left -= (long)take;
            i += take;
            if (c->chunk_left == 0) c->http = H_CRLF;
        } else if (c->http == H_CRLF) {
            if (p[i++] == '\n') c->http = H_SIZE;
        } else {
            i = len; /* H_DONE on a subscription: the stream ended */
        }
    }
    if (c->kind == PUB && c->http == H_DONE) {
        if (c->status != 200) pub_errors++;
        answered++;
        c->busy = 0;
        c->http = H_HEAD;
    }
}

/* The channel suffix of a path: none on a single channel, "-<c>" on several. */
static const char *suffix(int chan, char *buf, size_t cap) {
    if (n_channels == 1) return "";
    snprintf(buf, cap, "-%d", chan);
    return buf;
}

static void open_sub(Conn *c, int index) {
    memset(c, 0, sizeof *c);
    c->kind = SUB; c->index = index; c->chan = index % n_channels;
    c->fd = dial();
    char req[1024], sfx[16];
    int n = snprintf(req, sizeof req,
                     "GET %s%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n\r\n",
                     sub_path, suffix(c->chan, sfx, sizeof sfx), host, port);
    watch(c, EPOLLIN);
    send_all(c, req, (size_t)n);
}

static void open_pub(Conn *c, int index) {
    memset(c, 0, sizeof *c);
    c->kind = PUB; c->index = index;
    c->fd = dial();
    watch(c, EPOLLIN);
}

static char pad[1 << 16];

static void publish(Conn *c, long n) {
    char body[1 << 17], req[1 << 17], sfx[16];
    int chan = (int)(n % n_channels);
    const char *token = tokens[chan];
    int64_t t = now_ns();
    if (!first_pub_ns) first_pub_ns = t;
    int blen = snprintf(body, sizeof body,
                        "{\"type\":\"broadcast\",\"widget_key\":\"%s\",\"message\":"
                        "{\"n\":%ld,\"t\":%lld,\"pad\":\"%s\"}}",
                        widget_key, n, (long long)t, pad);
    int rlen = snprintf(req, sizeof req,
                        "POST %s%s%s%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                        "Content-Length: %d\r\n\r\n%s",
                        pub_path, suffix(chan, sfx, sizeof sfx), token[0] ? "?token=" : "", token,
                        host, port, blen, body);
    c->busy = 1;
    c->http = H_HEAD;
    send_all(c, req, (size_t)rlen);
    published++;
}

static void pump(int wait_ms) {
    struct epoll_event evs[512];
    int n = epoll_wait(ep, evs, 512, wait_ms);
    static char buf[1 << 18];
    for (int i = 0; i < n; i++) {
        Conn *c = evs[i].data.ptr;
        for (;;) {
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r > 0) { on_bytes(c, buf, (size_t)r); if ((size_t)r < sizeof buf) break; continue; }
            if (r == 0) {
                if (c->kind == SUB) { fprintf(stderr, "subscription %d closed by server\n", c->index); }
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                break;
            }
            if (errno == EAGAIN || errno == EINTR) break;
            if (errno == ECONNRESET) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; break; }
            die("read");
        }
    }
}

/* CPU seconds (user + system) that process `pid` has used, from /proc; -1 if unknown. */
static double proc_cpu(int pid) {
    if (!pid) return -1;
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* fields after ')': state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double servers_cpu(void) {
    double total = 0;
    for (int k = 0; k < n_cpu_pids; k++) {
        double cpu = proc_cpu(cpu_pids[k]);
        if (cpu > 0) total += cpu;
    }
    return total;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double percentile(double q) {
    if (!hist_n) return 0;
    long want = (long)(q * (double)hist_n);
    long seen = 0;
    for (long b = 0; b <= HIST_US / 10; b++) {
        seen += hist[b];
        if (seen > want) return (double)b * 10 / 1000.0; /* ms */
    }
    return HIST_US / 1000.0;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen --port P [--mode fanout|idle|publish-only] [--subs S] "
                    "[--publishes M] [--rate R] [--window W] [--size B] [--pub-conns K] "
                    "[--no-init] [--widget-key K] [--sub-path P] [--pub-path P] "
                    "[--duration S] [--timeout S] [--cpu-pid PID] [--channels N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define ARG(name) (strcmp(a, name) == 0 && i + 1 < argc)
        if (ARG("--port")) port = atoi(argv[++i]);
        else if (ARG("--host")) host = argv[++i];
        else if (ARG("--mode")) mode = argv[++i];
        else if (ARG("--subs")) n_subs = atoi(argv[++i]);
        else if (ARG("--publishes")) n_publish = atol(argv[++i]);
        else if (ARG("--rate")) rate = atof(argv[++i]);
        else if (ARG("--window")) window = atoi(argv[++i]);
        else if (ARG("--size")) size = atoi(argv[++i]);
        else if (ARG("--pub-conns")) n_pub = atoi(argv[++i]);
        else if (ARG("--widget-key")) widget_key = argv[++i];
        else if (ARG("--sub-path")) sub_path = argv[++i];
        else if (ARG("--pub-path")) pub_path = argv[++i];
        else if (ARG("--duration")) duration_s = atof(argv[++i]);
        else if (ARG("--timeout")) timeout_s = atof(argv[++i]);
        else if (ARG("--channels")) n_channels = atoi(argv[++i]);
        else if (ARG("--cpu-pid")) {
            if (n_cpu_pids < 16) cpu_pids[n_cpu_pids++] = atoi(argv[i + 1]);
            i++;
        }
        else if (strcmp(a, "--no-init") == 0) want_init = 0;
        else usage();
    }
    struct rlimit rl = {65536, 65536};
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) { getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    int padlen = size - 110 > 0 ? size - 110 : 1; /* the message body totals about --size bytes */
    if (padlen >= (int)sizeof pad) padlen = sizeof pad - 1;
    memset(pad, 'x', (size_t)padlen);

    ep = epoll_create1(0);
    int idle = strcmp(mode, "idle") == 0, pub_only = strcmp(mode, "publish-only") == 0;
    /* publish only: one subscription per channel, for its token, closed before publishing */
    int subs = pub_only ? (want_init ? n_channels : 0) : n_subs;
    if (n_channels < 1 || (n_channels > subs && (want_init || !pub_only))) {
        fprintf(stderr, "--channels must be 1 to --subs (every channel needs a subscriber)\n");
        return 2;
    }
    tokens = calloc((size_t)n_channels, sizeof *tokens);
    if (!tokens) die("calloc");
    n_conns = subs + (idle ? 0 : n_pub);
    conns = calloc((size_t)n_conns + 1, sizeof *conns);
    int64_t start = now_ns(), deadline = start + (int64_t)(timeout_s * 1e9);

    /* Connect subscribers in batches so the accept backlog never overflows. */
    int opened = 0;
    while (ready_subs < subs) {
        while (opened < subs && opened - ready_subs < 256) { open_sub(&conns[opened], opened); opened++; }
        pump(10);
        if (now_ns() > deadline) { fprintf(stderr, "only %ld of %d subscriptions ready\n", ready_subs, subs); return 3; }
    }
    double connect_s = (double)(now_ns() - start) / 1e9;
    for (int i = 0; pub_only && i < subs; i++) { /* keep its token; close the stream */
        epoll_ctl(ep, EPOLL_CTL_DEL, conns[i].fd, NULL);
        close(conns[i].fd);
        conns[i].fd = -1;
    }
    if (idle) {
        printf("READY %.3f\n", connect_s);
        fflush(stdout);
        char b[64];
        while (read(0, b, sizeof b) > 0) {}
        printf("{\"mode\":\"idle\",\"subs\":%d,\"connect_s\":%.3f}\n", subs, connect_s);
        return 0;
    }
    for (int k = 0; k < n_pub; k++) open_pub(&conns[subs + k], subs + k);
    double cpu0 = cpu_seconds(), server_cpu0 = servers_cpu();
    int64_t t0 = now_ns();
    int64_t next_at = t0;
    long target = pub_only ? (long)1e12 : n_publish;
    int64_t pub_end = pub_only ? t0 + (int64_t)(duration_s * 1e9) : 0;
    /* Every subscription receives the broadcasts of its channel: n_publish in all on one. */
    long expected = 0;
    for (int i = 0; i < subs && !pub_only; i++) {
        expected += n_publish > conns[i].chan ? (n_publish - conns[i].chan + n_channels - 1) / n_channels : 0;
    }
    while (1) {
        int64_t now = now_ns();
        if (now > deadline) break;
        if (pub_only && now >= pub_end) break;
        if (!pub_only && answered >= n_publish && deliveries >= expected) break;
        for (int k = 0; k < n_pub && published < target; k++) {
            Conn *c = &conns[subs + k];
            if (c->busy || c->fd < 0) continue;
            if (rate > 0) {
                if (now_ns() < next_at) break;
                next_at += (int64_t)(1e9 / rate);
            } else if (!pub_only && subs) {
                /* saturated: at most `window` broadcasts not yet delivered everywhere */
                if (published * subs / n_channels - deliveries >= (long)window * subs / n_channels) break;
            }
            publish(c, published);
        }
        int wait = 1;
        if (rate > 0) {
            int64_t d = (next_at - now_ns()) / 1000000;
            wait = d < 0 ? 0 : (d > 10 ? 10 : (int)d);
        }
        pump(wait);
    }
    double server_cpu = n_cpu_pids ? servers_cpu() - server_cpu0 : -1;
    int64_t t1 = pub_only ? now_ns() : (last_delivery_ns ? last_delivery_ns : now_ns());
    double elapsed = (double)(t1 - t0) / 1e9;
    long lost = 0, dup = 0, closed = 0;
    for (int i = 0; i < subs && !pub_only; i++) {
        long mine = n_publish > conns[i].chan ? (n_publish - conns[i].chan + n_channels - 1) / n_channels : 0;
        lost += mine - conns[i].received;
        dup += conns[i].dup;
        if (conns[i].fd < 0) closed++;
    }
    printf("{\"mode\":\"%s\",\"subs\":%d,\"publishes\":%ld,\"answered\":%ld,\"publish_errors\":%ld,"
           "\"deliveries\":%ld,\"lost\":%ld,\"duplicates\":%ld,\"closed_subscriptions\":%ld,"
           "\"seconds\":%.4f,\"deliveries_per_s\":%.1f,\"publishes_per_s\":%.1f,"
           "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"connect_s\":%.3f,"
           "\"client_cpu_s\":%.3f,\"server_cpu_s\":%.3f",
           mode, subs, published, answered, pub_errors, deliveries, lost, dup, closed,
           elapsed, elapsed > 0 ? deliveries / elapsed : 0, elapsed > 0 ? answered / elapsed : 0,
           percentile(0.5), percentile(0.99), percentile(0.99999), connect_s,
           cpu_seconds() - cpu0, server_cpu);
    if (n_channels > 1) printf(",\"channels\":%d", n_channels);
    printf("}\n");
    return 0;
}
