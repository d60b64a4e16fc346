# The sample project's actions: Rake tasks, run by opschain-action with the step's properties loaded.

desc 'Print a greeting and record it in the environment properties'
task :hello do
  greeting = ENV.fetch('GREETING', 'hello')
  environment_code = OpsChain.context.dig('change', 'environment_code').to_s
  puts "#{greeting} from #{environment_code.empty? ? 'an unknown environment' : environment_code}"
  environment = OpsChain.properties_for(:environment)
  environment['greetings'] = environment.fetch('greetings', 0) + 1
  environment['last_greeting'] = greeting
end

desc 'Show the env var properties the step was given (secrets are masked in the logs)'
task :show_env do
  %w[GREETING REGION API_TOKEN].each do |name|
    puts "#{name}=#{ENV.fetch(name, '(unset)')}"
  end
  warn 'show_env: done'
end

desc 'Deploy, then verify and notify as child steps'
task :deploy do
  puts "deploying #{OpsChain.properties.fetch('app', 'the app')}"
  OpsChain.properties_for(:project)['deployed'] = true
  OpsChain.child_steps('verify', 'notify', strategy: :sequential)
end

desc 'A step that fails with exit status 3'
task :fail do
  warn 'failing on purpose'
  exit 3
end

desc 'Say which tool the custom runner image added, if any'
task :tool do
  puts File.exist?('/usr/local/bin/sample-tool') ? `sample-tool` : 'no sample-tool in this image'
end
