package courier.sqlserver;

import java.io.IOException;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.Properties;

import javax.security.sasl.AuthenticationException;

import org.apache.hive.service.auth.PasswdAuthenticationProvider;

/**
 * The Thrift server's CUSTOM authentication (hive.server2.authentication=CUSTOM): the user and password
 * must be those of the owner-only credentials file that {@code courier sql-server start} wrote, named by
 * the JVM's system property {@code courier.sqlserver.credentials}. Hive builds the provider from a fresh
 * HiveConf, not the server's, so a system property is the one setting it sees. The file is read at each
 * login: a missing or unreadable file refuses everyone.
 */
public final class CredentialsFileAuthenticator implements PasswdAuthenticationProvider {

    static final String CREDENTIALS_PROPERTY = "courier.sqlserver.credentials";

    @Override
    public void Authenticate(String user, String password) throws AuthenticationException {
        String file = System.getProperty(CREDENTIALS_PROPERTY);
        if (file == null) {
            throw new AuthenticationException("courier sql-server: system property " + CREDENTIALS_PROPERTY + " is not set");
        }
        Properties expected = new Properties();
        try (Reader in = Files.newBufferedReader(Path.of(file), StandardCharsets.UTF_8)) {
            expected.load(in);
        } catch (IOException e) {
            throw new AuthenticationException("courier sql-server: cannot read the credentials file " + file, e);
        }
        boolean userOk = same(expected.getProperty("user"), user);
        boolean passwordOk = same(expected.getProperty("password"), password);  // both compared: no early exit
        if (!(userOk && passwordOk)) {
            throw new AuthenticationException("courier sql-server: wrong user or password for " + user);
        }
    }

    private static boolean same(String expected, String given) {
        if (expected == null || given == null) {
            return false;
        }
        return MessageDigest.isEqual(expected.getBytes(StandardCharsets.UTF_8), given.getBytes(StandardCharsets.UTF_8));
    }
}
