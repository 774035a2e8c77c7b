// Command pubsub-emulator serves Google's own Pub/Sub fake (pstest, from Debian's
// golang-google-cloud-dev) on one fixed address, for local runs and CI.
//
// One port answers both:
//   - gRPC over h2c (plaintext HTTP/2): the data plane (Publish, StreamingPull,
//     Acknowledge, ModifyAckDeadline, …) and every admin RPC;
//   - the REST/JSON admin calls that the Rust SDK's admin clients (TopicAdmin,
//     SubscriptionAdmin) make: PUT, GET, DELETE of /v1/projects/{p}/topics/{t} and
//     /v1/projects/{p}/subscriptions/{s}, plus the list calls. They are answered by calling
//     pstest's own gRPC admin methods, so both protocols see one state.
//
// Like pstest itself: ordering keys are accepted but not honoured, there is no
// dead-letter policy, and unacked messages are dropped after 10 minutes.
//
// Built offline with Debian's Go: see deploy/local/pubsub-emulator.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"

	"cloud.google.com/go/pubsub/pstest"
	"github.com/golang/protobuf/jsonpb"
	"github.com/golang/protobuf/proto"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	pb "google.golang.org/genproto/googleapis/pubsub/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	topicPath   = regexp.MustCompile(`^/v1/(projects/[^/:]+/topics/[^/:]+)$`)
	subPath     = regexp.MustCompile(`^/v1/(projects/[^/:]+/subscriptions/[^/:]+)$`)
	topicsPath  = regexp.MustCompile(`^/v1/(projects/[^/:]+)/topics$`)
	subsPath    = regexp.MustCompile(`^/v1/(projects/[^/:]+)/subscriptions$`)
	topicSubs   = regexp.MustCompile(`^/v1/(projects/[^/:]+/topics/[^/:]+)/subscriptions$`)
	unmarshaler = jsonpb.Unmarshaler{AllowUnknownFields: true}
	marshaler   = jsonpb.Marshaler{}
)

// httpStatus maps a gRPC code to the HTTP status Google's REST APIs answer with.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Canceled:
		return 499
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}

// writeError answers in Google's JSON error format, which the Rust SDK parses into a
// status with its code (e.g. ALREADY_EXISTS, NOT_FOUND).
func writeError(w http.ResponseWriter, err error) {
	st, _ := status.FromError(err)
	code := httpStatus(st.Code())
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	msg, _ := jsonString(st.Message())
	fmt.Fprintf(w, `{"error":{"code":%d,"message":%s,"status":"%s"}}`,
		code, msg, grpcCodeName(st.Code()))
}

func jsonString(s string) (string, error) {
	var b bytes.Buffer
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String(), nil
}

// grpcCodeName is the canonical upper-case name of a code, as in google.rpc.Code.
func grpcCodeName(c codes.Code) string {
	names := map[codes.Code]string{
		codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
		codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
		codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
		codes.Unauthenticated: "UNAUTHENTICATED",
	}
	if n, ok := names[c]; ok {
		return n
	}
	return "UNKNOWN"
}

func writeProto(w http.ResponseWriter, m proto.Message, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	var b bytes.Buffer
	if err := marshaler.Marshal(&b, m); err != nil {
		writeError(w, status.Errorf(codes.Internal, "encoding the answer: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	w.Write(b.Bytes())
}

// readBody decodes the JSON body of r into m; an empty body leaves m as it is.
func readBody(r *http.Request, m proto.Message) error {
	body, err := ioutil.ReadAll(r.Body)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "reading the body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := unmarshaler.Unmarshal(bytes.NewReader(body), m); err != nil {
		return status.Errorf(codes.InvalidArgument, "decoding the body: %v", err)
	}
	return nil
}

// defaultSubscription fills in what Google's service defaults and pstest refuses when
// unset: an ack deadline of 0 means 10 seconds.
func defaultSubscription(s *pb.Subscription) {
	if s.AckDeadlineSeconds == 0 {
		s.AckDeadlineSeconds = 10
	}
}

// defaults applies defaultSubscription to CreateSubscription calls made over gRPC.
func defaults(ctx context.Context, req interface{}, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (interface{}, error) {
	if s, ok := req.(*pb.Subscription); ok {
		defaultSubscription(s)
	}
	return next(ctx, req)
}

type rest struct{ g *pstest.GServer }

func (h rest) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p := r.URL.Path
	log.Printf("rest %s %s", r.Method, p)
	if m := topicPath.FindStringSubmatch(p); m != nil {
		name := m[1]
		switch r.Method {
		case http.MethodPut:
			t := &pb.Topic{}
			if err := readBody(r, t); err != nil {
				writeError(w, err)
				return
			}
			t.Name = name
			res, err := h.g.CreateTopic(ctx, t)
			writeProto(w, res, err)
		case http.MethodGet:
			res, err := h.g.GetTopic(ctx, &pb.GetTopicRequest{Topic: name})
			writeProto(w, res, err)
		case http.MethodDelete:
			res, err := h.g.DeleteTopic(ctx, &pb.DeleteTopicRequest{Topic: name})
			writeProto(w, res, err)
		default:
			writeError(w, status.Errorf(codes.Unimplemented, "%s %s", r.Method, p))
		}
		return
	}
	if m := subPath.FindStringSubmatch(p); m != nil {
		name := m[1]
		switch r.Method {
		case http.MethodPut:
			s := &pb.Subscription{}
			if err := readBody(r, s); err != nil {
				writeError(w, err)
				return
			}
			s.Name = name
			defaultSubscription(s)
			res, err := h.g.CreateSubscription(ctx, s)
			writeProto(w, res, err)
		case http.MethodGet:
			res, err := h.g.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: name})
			writeProto(w, res, err)
		case http.MethodDelete:
			res, err := h.g.DeleteSubscription(ctx, &pb.DeleteSubscriptionRequest{Subscription: name})
			writeProto(w, res, err)
		default:
			writeError(w, status.Errorf(codes.Unimplemented, "%s %s", r.Method, p))
		}
		return
	}
	if r.Method == http.MethodGet {
		q := r.URL.Query()
		var size int32
		fmt.Sscan(q.Get("pageSize"), &size)
		token := q.Get("pageToken")
		if m := topicsPath.FindStringSubmatch(p); m != nil {
			res, err := h.g.ListTopics(ctx, &pb.ListTopicsRequest{Project: m[1], PageSize: size, PageToken: token})
			writeProto(w, res, err)
			return
		}
		if m := subsPath.FindStringSubmatch(p); m != nil {
			res, err := h.g.ListSubscriptions(ctx, &pb.ListSubscriptionsRequest{Project: m[1], PageSize: size, PageToken: token})
			writeProto(w, res, err)
			return
		}
		if m := topicSubs.FindStringSubmatch(p); m != nil {
			res, err := h.g.ListTopicSubscriptions(ctx, &pb.ListTopicSubscriptionsRequest{Topic: m[1], PageSize: size, PageToken: token})
			writeProto(w, res, err)
			return
		}
	}
	writeError(w, status.Errorf(codes.Unimplemented, "this emulator does not answer %s %s over REST", r.Method, p))
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8085", "address to serve gRPC (h2c) and REST on")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)

	// pstest.NewServer builds an initialised fake (and also serves it on an ephemeral
	// loopback port of its own, which nobody uses); its GServer is served here.
	fake := pstest.NewServer()
	g := &fake.GServer

	gs := grpc.NewServer(grpc.UnaryInterceptor(defaults))
	pb.RegisterPublisherServer(gs, g)
	pb.RegisterSubscriberServer(gs, g)
	admin := rest{g: g}

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		admin.ServeHTTP(w, r)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("pubsub-emulator: listening on %s: %v", *addr, err)
	}
	srv := &http.Server{Handler: h2c.NewHandler(handler, &http2.Server{})}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		// Open StreamingPull streams would keep a graceful shutdown waiting: just stop.
		log.Printf("pubsub-emulator: %v, stopping", s)
		os.Exit(0)
	}()

	log.Printf("pubsub-emulator: serving pstest on %s (gRPC over h2c and REST admin)", ln.Addr())
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		log.Fatalf("pubsub-emulator: %v", err)
	}
}
