package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
)

// This file is the tenant service's side of the story: the code that
// registers a bakery and geocodes its address through Nominatim.
//
// Before minimesh it went through a Python client with a hand-written
// circuit breaker. Now it has no resilience code at all: no breaker, no
// retries, no timeout of its own. It is a plain net/http client that honours
// HTTP_PROXY, like any HTTP client in any language, and calls the service by
// its Kubernetes name. The minimesh sidecar behind HTTP_PROXY applies the
// ResiliencePolicy for nominatim-service.

// nominatimURL is where the tenant finds Nominatim, as in the cluster.
const nominatimURL = "http://nominatim-service:8000"

type bakery struct {
	Name    string
	Address string
}

// bakeries the tenant registers, in turn.
var bakeries = []bakery{
	{"Panadería La Espiga", "Calle de Toledo 42, Madrid"},
	{"Horno San Onofre", "Calle de Hortaleza 9, Madrid"},
	{"Pan de Lujo", "Calle de Jorge Juan 20, Madrid"},
	{"Viena Capellanes", "Calle de Arenal 30, Madrid"},
	{"Obrador Goya", "Calle de Goya 58, Madrid"},
	{"Panadería Mallorca", "Calle de Serrano 6, Madrid"},
	{"La Miguería", "Calle de Fuencarral 101, Madrid"},
	{"Horno de Santiago", "Calle de Santiago 12, Madrid"},
	{"Panadería Cruz", "Plaza de la Cruz Verde 3, Madrid"},
	{"El Riojano", "Calle Mayor 10, Madrid"},
	{"Harina", "Plaza de la Independencia 10, Madrid"},
	{"Panic", "Calle del Conde Duque 13, Madrid"},
}

// place is the part of a Nominatim search result the tenant keeps.
type place struct {
	Lat         string `json:"lat"`
	Lon         string `json:"lon"`
	DisplayName string `json:"display_name"`
}

// geocoded is what one geocoding call gave the tenant: the HTTP outcome
// (which the demo shows) and the places when it worked.
type geocoded struct {
	Status int
	Header http.Header
	Places []place
}

// geocoder is the tenant's Nominatim client.
type geocoder struct {
	client *http.Client
}

func newGeocoder() *geocoder {
	// The whole "integration" with the mesh: take the proxy from the
	// environment. (http.DefaultTransport does the same; it is spelled out
	// here to show that nothing else is needed.)
	return &geocoder{client: &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyFromEnvironment},
	}}
}

// geocode looks an address up. requestID, when the tenant has one (the
// registration came through the gateway with an X-Request-ID), is passed on;
// otherwise the sidecar makes one up.
func (g *geocoder) geocode(ctx context.Context, address, requestID string) (*geocoded, error) {
	u := nominatimURL + "/search?format=json&limit=1&q=" + url.QueryEscape(address)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if requestID != "" {
		req.Header.Set("X-Request-ID", requestID)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := &geocoded{Status: resp.StatusCode, Header: resp.Header}
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&out.Places); err != nil {
			return out, err
		}
	}
	io.Copy(io.Discard, resp.Body)
	return out, nil
}
