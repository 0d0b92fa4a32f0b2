package main

import (
	"context"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The backend's gRPC service, defined by hand (no generated code):
//
//	service Who { rpc Name(google.protobuf.Empty) returns (google.protobuf.StringValue); }
//
// Name answers the pod's host name, after the backend's delay, or fails
// while the backend fails (a 503 switch as UNAVAILABLE, any other code as
// INTERNAL).
const whoMethod = "/testapp.Who/Name"

type whoServer interface {
	Name(context.Context, *emptypb.Empty) (*wrapperspb.StringValue, error)
}

var whoDesc = grpc.ServiceDesc{
	ServiceName: "testapp.Who",
	HandlerType: (*whoServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Name",
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			if icpt == nil {
				return srv.(whoServer).Name(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: whoMethod}
			return icpt(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(whoServer).Name(ctx, req.(*emptypb.Empty))
			})
		},
	}},
	Metadata: "testapp/who.proto",
}

func newGRPCServer(b *backend) *grpc.Server {
	s := grpc.NewServer()
	s.RegisterService(&whoDesc, b)
	return s
}

// Name is the gRPC face of the backend (whoServer).
func (b *backend) Name(ctx context.Context, _ *emptypb.Empty) (*wrapperspb.StringValue, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	failCode, delay := b.count("/grpc", len(md.Get("via")) > 0)
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-pod", b.host))
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-pod", b.host))
	switch failCode {
	case 0:
		return wrapperspb.String(b.host), nil
	case http.StatusServiceUnavailable:
		return nil, status.Errorf(codes.Unavailable, "%s fails on purpose", b.host)
	default:
		return nil, status.Errorf(codes.Internal, "%s fails on purpose (%d)", b.host, failCode)
	}
}

// callWho makes one Name call on cc and returns the pod that answered
// (from the answer, or from the x-pod metadata of a failed call).
func callWho(ctx context.Context, cc *grpc.ClientConn) (string, error) {
	var out wrapperspb.StringValue
	var hdr, tr metadata.MD
	err := cc.Invoke(ctx, whoMethod, &emptypb.Empty{}, &out, grpc.Header(&hdr), grpc.Trailer(&tr))
	if err != nil {
		for _, md := range []metadata.MD{hdr, tr} {
			if p := md.Get("x-pod"); len(p) > 0 {
				return p[0], err
			}
		}
		return "", err
	}
	return out.GetValue(), nil
}
