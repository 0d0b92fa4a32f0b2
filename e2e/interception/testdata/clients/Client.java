// One GET with a Java HTTP client, no proxy setting (java Client.java KIND
// URL, Java 11+ runs the source): prints "STATUS X-MINIMESH-ERROR" ("-"
// when absent). KIND: HttpClient, HttpURLConnection.
import java.net.HttpURLConnection;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Client {
    public static void main(String[] args) throws Exception {
        String kind = args[0], url = args[1];
        if (kind.equals("HttpClient")) {
            HttpResponse<String> r = HttpClient.newHttpClient().send(
                    HttpRequest.newBuilder(URI.create(url)).build(), HttpResponse.BodyHandlers.ofString());
            System.out.println(r.statusCode() + " " + r.headers().firstValue("x-minimesh-error").orElse("-"));
        } else if (kind.equals("HttpURLConnection")) {
            HttpURLConnection c = (HttpURLConnection) URI.create(url).toURL().openConnection();
            int status = c.getResponseCode();
            String err = c.getHeaderField("X-Minimesh-Error");
            System.out.println(status + " " + (err == null ? "-" : err));
        } else {
            System.err.println("unknown kind " + kind);
            System.exit(2);
        }
    }
}
