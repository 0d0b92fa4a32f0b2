package outbound

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestResendBody drives the ReverseProxy's body through h2Tries as Go's
// HTTP/2 transport does: a request placed on a connection that could not
// take it has its unread body closed, then goes again on another and is
// read (resendBody). The upstream answers with what it read.
func TestResendBody(t *testing.T) {
	for _, tc := range []struct {
		name  string
		h2    bool // through h2Tries
		sends func(b io.ReadCloser) (string, error)
		want  string // the answer's body, or the 502's cause
	}{
		{"closed unread then resent", true, func(b io.ReadCloser) (string, error) {
			b.Close()
			s, err := io.ReadAll(b)
			return string(s), err
		}, "hello"},
		// The same without resendBody: the ReverseProxy's body refuses.
		{"closed unread then resent, bare", false, func(b io.ReadCloser) (string, error) {
			b.Close()
			s, err := io.ReadAll(b)
			return string(s), err
		}, "ReverseProxy does an invalid Read on closed Body"},
		{"read then closed", true, func(b io.ReadCloser) (string, error) {
			p := make([]byte, 2)
			if _, err := io.ReadFull(b, p); err != nil {
				return "", err
			}
			b.Close()
			_, err := b.Read(p)
			return "", err
		}, http.ErrBodyReadAfterClose.Error()},
		{"resent then closed", true, func(b io.ReadCloser) (string, error) {
			b.Close()
			s, err := io.ReadAll(b)
			b.Close()
			if _, rerr := b.Read(make([]byte, 1)); rerr == nil || err != nil {
				return "", errors.Join(errors.New("read after the resend's close did not fail"), err)
			}
			return string(s), nil
		}, "hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var upstream http.RoundTripper = roundTripFunc(func(r *http.Request) (*http.Response, error) {
				s, err := tc.sends(r.Body)
				if err != nil {
					return nil, err
				}
				return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(s)), Request: r}, nil
			})
			if tc.h2 {
				upstream = h2Tries{upstream}
			}
			var cause error
			u, _ := url.Parse("http://upstream.test")
			rp := &httputil.ReverseProxy{
				Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
				Transport:    upstream,
				ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) { cause = err; w.WriteHeader(http.StatusBadGateway) },
			}
			w := httptest.NewRecorder()
			rp.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "http://app.test/", strings.NewReader("hello")))
			got := w.Body.String()
			if cause != nil {
				got = cause.Error()
			}
			if got != tc.want {
				t.Errorf("got %q (status %d), want %q", got, w.Code, tc.want)
			}
		})
	}
}
