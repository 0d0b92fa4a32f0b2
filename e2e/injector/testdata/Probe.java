// Probe makes the calls a JVM app would, configured by nothing but the
// JAVA_TOOL_OPTIONS the injector set: java.net.http's HttpClient and
// HttpURLConnection to a cluster name, HttpURLConnection to localhost,
// and HttpClient to an https:// URL. It prints one line per call.
//
//   java Probe.java http://orders.test:8000 http://localhost:PORT https://secure.test:8443
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Probe {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(args[0] + "/httpclient")).timeout(Duration.ofSeconds(10)).build();
        System.out.println("httpclient " + client.send(req, HttpResponse.BodyHandlers.ofString()).body());
        System.out.println("urlconnection " + get(args[0] + "/urlconnection"));
        System.out.println("direct " + get(args[1] + "/direct"));
        try {
            client.send(HttpRequest.newBuilder(URI.create(args[2] + "/tls")).timeout(Duration.ofSeconds(10)).build(),
                    HttpResponse.BodyHandlers.ofString());
            System.out.println("https answered");
        } catch (Exception e) {
            // The fake proxy refuses the tunnel: what counts is that it was asked.
            System.out.println("https " + e.getClass().getSimpleName());
        }
    }

    static String get(String url) throws Exception {
        HttpURLConnection c = (HttpURLConnection) URI.create(url).toURL().openConnection();
        c.setConnectTimeout(5000);
        c.setReadTimeout(10000);
        try (InputStream in = c.getInputStream()) {
            return new String(in.readAllBytes());
        }
    }
}
