package courier.sqlserver;

import java.util.Set;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.expressions.CallMethodViaReflection;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.SubqueryExpression;
import org.apache.spark.sql.catalyst.plans.logical.Command;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.ScriptTransformation;
import org.apache.spark.sql.execution.command.SetCommand;

import scala.Function1;
import scala.Option;
import scala.Tuple2;
import scala.collection.Iterator;
import scala.runtime.AbstractFunction1;
import scala.runtime.BoxedUnit;

/**
 * courier's SQL endpoint is read-only: a Spark SQL extension ({@code spark.sql.extensions}) whose check
 * rule runs on every analysed plan, before anything executes, and refuses any command that is not a
 * query, SHOW, DESCRIBE, EXPLAIN, USE or SET. Spark has no authorisation of its own; an allow-list (not a
 * list of write commands) also refuses what Delta adds (OPTIMIZE, VACUUM, RESTORE) and whatever a later
 * Spark adds. Two query features that run code on the server are refused too: {@code reflect} /
 * {@code java_method} (calls any static Java method, e.g. System.exit) and {@code TRANSFORM ... USING}
 * (runs a program); so is SET of {@code spark.sql.runSQLOnFiles} (the server turns off reading files by
 * path, e.g. {@code SELECT * FROM text.`/etc/passwd`}).
 */
public final class ReadOnlyExtension extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> {

    /** Commands an analyst needs that change nothing (class names as analysed by Spark 4.0 / Delta 4.0). */
    static final Set<String> ALLOWED_COMMANDS = Set.of(
        "SetCommand", "SetCatalogAndNamespace", "SetNamespaceCommand", "SetCatalogCommand",
        "ExplainCommand");
    static final String FILE_QUERIES = "spark.sql.runsqlonfiles";

    @Override
    public BoxedUnit apply(SparkSessionExtensions extensions) {
        extensions.injectCheckRule(new AbstractFunction1<SparkSession, Function1<LogicalPlan, BoxedUnit>>() {
            @Override
            public Function1<LogicalPlan, BoxedUnit> apply(SparkSession session) {
                return new AbstractFunction1<LogicalPlan, BoxedUnit>() {
                    @Override
                    public BoxedUnit apply(LogicalPlan plan) {
                        check(plan);
                        return BoxedUnit.UNIT;
                    }
                };
            }
        });
        return BoxedUnit.UNIT;
    }

    /** Throws ReadOnlyViolation if {@code plan}, or anything in it, writes, changes the catalog or runs code. */
    static void check(LogicalPlan plan) {
        String name = plan.getClass().getSimpleName();
        if (plan instanceof Command && !readOnlyCommand(name)) {
            throw new ReadOnlyViolation(statementKind(name) + " (" + name + ")");
        }
        if (plan instanceof ScriptTransformation) {
            throw new ReadOnlyViolation("TRANSFORM ... USING (runs a program on the server)");
        }
        if (plan instanceof SetCommand) {
            Option<Tuple2<String, Option<String>>> kv = ((SetCommand) plan).kv();
            if (kv.isDefined() && kv.get()._2().isDefined() && kv.get()._1().trim().toLowerCase().equals(FILE_QUERIES)) {
                throw new ReadOnlyViolation("SET " + kv.get()._1().trim() + " (reading files by path stays off)");
            }
        }
        for (Iterator<Expression> it = plan.expressions().iterator(); it.hasNext(); ) {
            checkExpression(it.next());
        }
        for (Iterator<LogicalPlan> it = plan.children().iterator(); it.hasNext(); ) {
            check(it.next());
        }
    }

    private static void checkExpression(Expression expression) {
        if (expression instanceof CallMethodViaReflection) {
            throw new ReadOnlyViolation("reflect / java_method (calls Java methods on the server)");
        }
        if (expression instanceof SubqueryExpression) {
            check(((SubqueryExpression) expression).plan());
        }
        for (Iterator<Expression> it = expression.children().iterator(); it.hasNext(); ) {
            checkExpression(it.next());
        }
    }

    static boolean readOnlyCommand(String name) {
        return ALLOWED_COMMANDS.contains(name) || name.startsWith("Show") || name.startsWith("Describe");
    }

    /** The SQL statement an analysed command came from, for the error message. */
    static String statementKind(String name) {
        String n = name.toLowerCase();
        if (n.contains("merge")) return "MERGE";
        if (n.contains("update")) return "UPDATE";
        if (n.contains("truncate")) return "TRUNCATE";
        if (n.contains("delete")) return "DELETE";
        if (n.contains("optimize")) return "OPTIMIZE";
        if (n.contains("vacuum")) return "VACUUM";
        if (n.contains("restore")) return "RESTORE";
        if (n.contains("insert") || n.contains("append") || n.contains("overwrite") || n.contains("write")) return "INSERT";
        if (n.contains("drop")) return "DROP";
        if (n.contains("jar") || n.contains("archive") || n.contains("file")) return "ADD JAR / ADD FILE";
        if (n.contains("cache")) return "CACHE";
        if (n.contains("create")) return "CREATE";
        if (n.contains("alter") || n.contains("rename") || n.contains("add") || n.contains("replace")
            || n.contains("properties") || n.contains("location")) return "ALTER";
        return "this statement";
    }

    /** The error an analyst sees (beeline prints it after "Error running query:"). */
    public static final class ReadOnlyViolation extends SecurityException {
        ReadOnlyViolation(String what) {
            super("courier sql-server is read-only: " + what + " is refused. The courier jobs write the "
                  + "warehouse; analysts query it (SELECT, SHOW, DESCRIBE, EXPLAIN, USE, SET)");
        }
    }
}
