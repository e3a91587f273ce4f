// Grants the ACLs read from standard input in one Admin call (one JVM start instead of
// one kafka-acls run per rule). First line: the admin user's password; then one rule a
// line: user, resource type, pattern type, resource name, operation (tab separated).
// Run with the broker's jars: java -cp 'kafka-libs/*' AclSetup.java <bootstrap> <admin>
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class AclSetup {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String password = in.readLine();
        Properties config = new Properties();
        config.put("bootstrap.servers", args[0]);
        config.put("security.protocol", "SASL_PLAINTEXT");
        config.put("sasl.mechanism", "SCRAM-SHA-512");
        config.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule"
                + " required username=\"" + args[1] + "\" password=\"" + password + "\";");
        List<AclBinding> rules = new ArrayList<>();
        for (String line; (line = in.readLine()) != null; ) {
            if (line.isBlank()) continue;
            String[] f = line.split("\t");
            rules.add(new AclBinding(
                    new ResourcePattern(ResourceType.valueOf(f[1]), f[3], PatternType.valueOf(f[2])),
                    new AccessControlEntry("User:" + f[0], "*", AclOperation.valueOf(f[4]),
                            AclPermissionType.ALLOW)));
        }
        try (Admin admin = Admin.create(config)) {
            admin.createAcls(rules).all().get();
        }
        System.out.println("granted " + rules.size() + " ACLs");
    }
}
